#!/bin/sh
# Copy the bundled policy (policy/init.py and policy/*.toml) into the chart.
# tests/chart/test_chart.py fails when the two copies differ; run this after editing policy/.
set -eu
top=$(cd "$(dirname "$0")/../.." && pwd)
rm -f "$top"/chart/files/policy/*
cp "$top"/policy/init.py "$top"/policy/*.toml "$top"/chart/files/policy/
