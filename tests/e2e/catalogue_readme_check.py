"""The README's validation catalogue and validation_catalogue_test name the same rows.

Usage: catalogue_readme_check.py README.md path/to/validation_catalogue_test

Every row of the tables under "### Validation catalogue" (up to the next heading) whose header's
last column is "test" ends with the name of its test in backquotes; every test of the binary (`--gtest_list_tests`; for the table-driven
rows, the parameter's name) must have exactly one such row, and every row a test.
"""

import re
import subprocess
import sys


def readme_rows(path):
    with open(path, encoding="utf-8") as f:
        lines = f.read().splitlines()
    try:
        start = lines.index("### Validation catalogue")
    except ValueError:
        sys.exit(f"{path}: no '### Validation catalogue' subsection")
    names = []
    in_fence = False
    in_catalogue_table = False
    for line in lines[start + 1:]:
        if line.startswith("```"):
            in_fence = not in_fence
        if in_fence:
            continue
        if re.match(r"^#{1,3} ", line):
            break  # The next section.
        if not line.startswith("|"):
            in_catalogue_table = False
            continue
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if re.fullmatch(r"[\s|:-]+", line):
            continue  # The delimiter row.
        if not in_catalogue_table:
            # A header row: the catalogue's tables end with a "test" column.
            in_catalogue_table = cells[-1] == "test"
            continue
        test = re.fullmatch(r"`([A-Za-z0-9_]+)`", cells[-1])
        if not test:
            sys.exit(f"{path}: catalogue row without a test name in its last column: {line}")
        names.append(test.group(1))
    return names


def binary_tests(path):
    listing = subprocess.run(
        [path, "--gtest_list_tests"], check=True, capture_output=True, text=True, timeout=60
    ).stdout
    names = []
    for line in listing.splitlines():
        if not line.startswith("  "):
            continue  # A suite ("Suite." or "Prefix/Suite.") or gtest's own output.
        test = line.split("#")[0].strip()
        names.append(test.rsplit("/", 1)[-1])
    return names


def main():
    readme, binary = sys.argv[1], sys.argv[2]
    rows, tests = readme_rows(readme), binary_tests(binary)
    problems = []
    for name in sorted({n for n in rows if rows.count(n) > 1}):
        problems.append(f"README row listed twice: {name}")
    for name in sorted({n for n in tests if tests.count(n) > 1}):
        problems.append(f"test name used twice: {name}")
    for name in sorted(set(tests) - set(rows)):
        problems.append(f"test without a README row: {name}")
    for name in sorted(set(rows) - set(tests)):
        problems.append(f"README row without a test: {name}")
    if not rows:
        problems.append("the README's catalogue has no rows")
    if problems:
        sys.exit("\n".join(problems))
    print(f"{len(rows)} catalogue rows, each with its test")


if __name__ == "__main__":
    main()
