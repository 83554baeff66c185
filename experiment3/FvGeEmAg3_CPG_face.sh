#!/usr/bin/env bash
# CPG, experiment 3, task 4: the age task of fold 3 (age3), branching from the picked emotion model.
AGE_FOLD=3 exec bash "$(dirname "$0")/FvGeEm_CPG_face.sh" "$@"
