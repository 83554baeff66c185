"""The README and docs/ stay true to the code: the front page is short and links every page,
every file they name exists, every `python tools/*.py` command they show parses with the tool's
own flags, and every knob set before `bash experiment*/...sh` is read by that script."""
import glob
import importlib.util
import os
import re
import shlex

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PAGES = sorted(glob.glob(os.path.join(REPO, 'docs', '*.md')))
DOCS = [os.path.join(REPO, 'README.md')] + PAGES


def _read(path):
    with open(path) as f:
        return f.read()


def _code_lines(text):
    """The lines of the ```bash blocks, continuation lines joined."""
    lines = []
    for block in re.findall(r'```bash\n(.*?)```', text, re.S):
        joined = block.replace('\\\n', ' ')
        lines += [line.split(' #')[0].strip() for line in joined.splitlines()]
    return [line for line in lines if line and not line.startswith('#')]


def test_the_front_page_is_short_and_links_every_page():
    readme = _read(os.path.join(REPO, 'README.md'))
    assert len(readme.splitlines()) <= 250
    assert '## Contents' in readme
    linked = set(re.findall(r'\]\((docs/[^)#]+)', readme))
    for page in linked:
        assert os.path.isfile(os.path.join(REPO, page)), page
    assert {os.path.relpath(p, REPO) for p in PAGES} <= linked, 'a docs page the README does not link'


@pytest.mark.parametrize('doc', DOCS, ids=lambda p: os.path.relpath(p, REPO))
def test_every_file_the_docs_name_exists(doc):
    text = _read(doc)
    named = set(re.findall(r'\b((?:experiment[123]|tools|utils|models|tests|docs)/[\w./-]+\.(?:sh|py|md|txt))', text))
    named |= {m for m in re.findall(r'\b(CPG_\w+_main\.py)', text)}
    missing = sorted(p for p in named if not os.path.exists(os.path.join(REPO, p)) and '<' not in p)
    assert not missing, f'{os.path.relpath(doc, REPO)} names files that do not exist: {missing}'
    for link in re.findall(r'\]\(([^)#:]+\.md)', text):   # relative links between pages
        target = os.path.normpath(os.path.join(os.path.dirname(doc), link))
        assert os.path.isfile(target), f'{os.path.relpath(doc, REPO)} links {link}'


def _tool_parser(name):
    spec = importlib.util.spec_from_file_location(name, os.path.join(REPO, 'tools', f'{name}.py'))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_args_parser()


def _commands(kind):
    for doc in DOCS:
        for line in _code_lines(_read(doc)):
            for part in line.split('&&'):
                try:
                    # <placeholders> stand for a value; [--optional flags] are usage notation
                    words = shlex.split(re.sub(r'\[-[^\]]*\]', '', re.sub(r'<[^>]*>', 'X', part)), posix=True)
                except ValueError:   # a line of a multi-line `python -c "..."`: not a tool command
                    continue
                while words and re.match(r'^[A-Z_]+=', words[0]):
                    words = words[1:]
                if words[:1] == [kind]:
                    yield os.path.relpath(doc, REPO), part.strip(), words


def test_every_documented_tool_command_parses_with_the_tools_flags(capsys):
    seen = 0
    for doc, line, words in _commands('python'):
        if len(words) < 2 or not words[1].startswith('tools/'):
            continue
        name = os.path.basename(words[1])[:-3]
        args = [w for w in words[2:] if w != '...']
        try:
            _tool_parser(name).parse_args(args)
        except SystemExit as exc:
            if exc.code:
                pytest.fail(f'{doc}: `{line}` does not parse with tools/{name}.py: {capsys.readouterr().err}')
        seen += 1
    assert seen >= 10


def test_every_knob_set_before_a_script_is_read_by_it():
    seen = 0
    for doc in DOCS:
        for line in _code_lines(_read(doc)):
            match = re.match(r'^((?:[A-Z_][A-Z0-9_]*=\S+\s+)+)bash\s+(experiment[123]/\S+\.sh)', line)
            if not match:
                continue
            script = os.path.join(REPO, match.group(2))
            sources = _read(script) + _read(os.path.join(os.path.dirname(script), 'common.sh')) \
                + _read(os.path.join(REPO, 'tools', 'stages.sh'))
            code = '\n'.join(line for line in sources.splitlines() if not line.lstrip().startswith('#'))
            for knob in re.findall(r'([A-Z_][A-Z0-9_]*)=', match.group(1)):   # read as $KNOB / ${KNOB...}
                assert re.search(rf'\$\{{?{knob}\b', code), f'{doc}: {knob} is not read by {match.group(2)}'
                seen += 1
    assert seen >= 5
