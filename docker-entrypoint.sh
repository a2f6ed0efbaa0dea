#!/bin/sh
# The official images' pattern: no arguments, a first argument that is a flag,
# or one of main.py's commands runs main.py with them; anything else runs as given.
# exec, so that the command is PID 1 and receives docker stop's signal itself.
set -e
case "${1:-}" in
# BEGIN commands: written by python -m mnist_hogwild.commands.reference
    "" | -* | train | evaluate | infer | export | plot | serve | models)
# END commands
        set -- python /opt/mnist-hogwild/main.py "$@" ;;
esac
exec "$@"
