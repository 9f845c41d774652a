#!/usr/bin/env bash
# Fetch the wheels of benchmarks/gpu_wheels.txt into .whl/ at the repository root, for the lent GPU machine
# (Python 3.12, x86-64, no package index there): docs/gpu_check.md. Run it here, where pip reaches an index:
#
#     bash benchmarks/gpu_wheels.sh            # PYTHON=/path/to/python to use another pip
#
# Then it checks what it fetched: one wheel per line of the list, one version of each, every dependency of
# every wheel (Requires-Dist, for Python 3.12 on Linux, extras left out) either carried or on the machine
# (benchmarks/gpu_machine_packages.txt), the total under 50 MiB (the run tool carries 64 MiB with the tree),
# and .whl/ ignored by git (the wheels are never committed).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}

rm -rf .whl
mkdir .whl
grep -v '^\s*#' benchmarks/gpu_wheels.txt | grep -v '^\s*$' >.whl/requirements.txt
# the device README's command (docs: /work/.library/device/README.md), with the whole list at once
"$PYTHON" -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d .whl -r .whl/requirements.txt
rm .whl/requirements.txt

"$PYTHON" - <<'EOF'
import re
import sys
import zipfile
from pathlib import Path

try:
    from packaging.requirements import Requirement
except ImportError:  # pip brings its own copy
    from pip._vendor.packaging.requirements import Requirement


def norm(name):
    return re.sub(r"[-_.]+", "-", name.strip()).lower()


def names(path):
    lines = (line.split("#")[0].strip() for line in Path(path).read_text().splitlines())
    return [line for line in lines if line]


pins = dict(line.split("==") for line in names("benchmarks/gpu_wheels.txt"))
pins = {norm(name): version for name, version in pins.items()}
machine = {norm(name) for name in names("benchmarks/gpu_machine_packages.txt")}
device = {"python_version": "3.12", "python_full_version": "3.12.3", "sys_platform": "linux", "os_name": "posix",
          "platform_system": "Linux", "platform_machine": "x86_64", "implementation_name": "cpython",
          "platform_python_implementation": "CPython", "extra": ""}
wheels, problems = {}, []
for wheel in sorted(Path(".whl").glob("*.whl")):
    with zipfile.ZipFile(wheel) as archive:
        meta = next(n for n in archive.namelist() if n.endswith(".dist-info/METADATA"))
        text = archive.read(meta).decode()
    name = norm(re.search(r"^Name: (.*)$", text, re.M).group(1))
    version = re.search(r"^Version: (.*)$", text, re.M).group(1).strip()
    if name in wheels:
        problems.append(f"two wheels of {name}: {wheels[name][0]} and {version}")
    wheels[name] = (version, re.findall(r"^Requires-Dist: (.*)$", text, re.M), wheel.stat().st_size)
for name, version in pins.items():
    if name not in wheels:
        problems.append(f"{name}=={version}: no wheel fetched")
    elif wheels[name][0] != version:
        problems.append(f"{name}: fetched {wheels[name][0]}, the list pins {version}")
for name, (_, requires, _) in wheels.items():
    for line in requires:
        requirement = Requirement(line)
        if requirement.marker is not None and not requirement.marker.evaluate(device):
            continue
        if norm(requirement.name) not in pins and norm(requirement.name) not in machine:
            problems.append(f"{name} needs {line}: neither carried nor on the machine; add it to the list")
size = sum(size for _, _, size in wheels.values())
print(f"{len(wheels)} wheels, {size / 2**20:.1f} MiB in .whl/")
if size > 50 * 2**20:
    problems.append(f"{size / 2**20:.1f} MiB: over 50 MiB (the run tool carries 64 MiB with the working tree)")
for problem in problems:
    print(f"problem: {problem}", file=sys.stderr)
sys.exit(1 if problems else 0)
EOF

if ! git check-ignore -q .whl; then
    echo "warning: .whl/ is not ignored by git here; add /.whl/ to .gitignore (never commit the wheels)" >&2
fi
