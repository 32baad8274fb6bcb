#!/bin/sh
echo "$GREETING, $*: pid $$, user $(id -un), hostname $(hostname), $(cat /app/built.txt)"
