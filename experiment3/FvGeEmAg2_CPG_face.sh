#!/usr/bin/env bash
# CPG, experiment 3, task 4: the age task of fold 2 (age2), branching from the picked emotion model.
AGE_FOLD=2 exec bash "$(dirname "$0")/FvGeEm_CPG_face.sh" "$@"
