#!/bin/sh
# The official images' pattern: no arguments or a first argument that is a
# flag runs the trainer with those flags; anything else runs as given.
# exec, so that the command is PID 1 and receives docker stop's signal itself.
set -e
if [ "$#" -eq 0 ] || [ "${1#-}" != "$1" ]; then
    set -- python /opt/mnist-hogwild/main.py "$@"
fi
exec "$@"
