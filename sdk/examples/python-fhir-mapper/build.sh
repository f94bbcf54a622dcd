#!/bin/sh
# Builds py-practitioner.wasm from app.py with componentize-py, against the
# contract in sdk/wit (world `fhir-mapper`). Needs python3 (3.10+) and
# access to PyPI; everything it installs stays in ./build.
set -eu
cd "$(dirname "$0")"

COMPONENTIZE_PY_VERSION=0.25.1
VENV=build/venv

if ! "$VENV/bin/componentize-py" --version 2>/dev/null | grep -qx "componentize-py $COMPONENTIZE_PY_VERSION"; then
    # pip comes into a venv through ensurepip, which Debian's python3 has
    # only with python3-venv (scripts/setup.sh installs it): a python3
    # first on PATH without it gives way to Debian's.
    rm -rf "$VENV"
    python3 -m venv "$VENV" 2>/dev/null || { rm -rf "$VENV"; /usr/bin/python3 -m venv "$VENV"; }
    "$VENV/bin/pip" install --quiet --disable-pip-version-check "componentize-py==$COMPONENTIZE_PY_VERSION"
fi

# The app is the module `app` (app.py in this folder); the generated
# bindings (`wit_world`) are made on the fly and bundled with it.
"$VENV/bin/componentize-py" -d ../../wit -w fhir-mapper componentize -p . app -o py-practitioner.wasm
ls -l py-practitioner.wasm
