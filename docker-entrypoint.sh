#!/bin/sh
# The official images' pattern: no arguments, a first argument that is a flag,
# or one of the trainer's commands (train, evaluate, infer, export, plot, serve, models) runs
# main.py with them; anything else runs as given.
# exec, so that the command is PID 1 and receives docker stop's signal itself.
set -e
case "${1:-}" in
    "" | -* | train | evaluate | infer | export | plot | serve | models)
        set -- python /opt/mnist-hogwild/main.py "$@" ;;
esac
exec "$@"
