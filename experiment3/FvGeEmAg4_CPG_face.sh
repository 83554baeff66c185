#!/usr/bin/env bash
# CPG, experiment 3, task 4: the age task of fold 4 (age4), branching from the picked emotion model.
AGE_FOLD=4 exec bash "$(dirname "$0")/FvGeEm_CPG_face.sh" "$@"
