#!/usr/bin/env bash
# CPG, experiment 3, task 4: the age task of fold 0 (age0), branching from the picked emotion model.
AGE_FOLD=0 exec bash "$(dirname "$0")/FvGeEm_CPG_face.sh" "$@"
