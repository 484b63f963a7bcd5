#!/usr/bin/env python3
"""Compiles every ```cpp block of README.md, so the manual cannot drift from the API.

Convention (see the Testing section of README.md):
  * A block containing `int main(` is a complete translation unit: compiled as it is (and linked, unless it
    needs MPI).
  * Any other block is a fragment: it is compiled after tests/readme/prelude.hpp (procpool, the common standard
    headers and a few declarations snippets use, e.g. `long square(long)`), inside
    `void readme_block_N(procpool::Pool& pool) { ... }`: a fragment may use `pool` without declaring it.
  * An HTML comment on the line just before the fence changes that:
      <!-- readme: namespace -->  the fragment is compiled at namespace scope (structs, function definitions)
      <!-- readme: mpi -->        the block needs MPI (also detected from `procpool/mpi.hpp`); skipped without MPI
      <!-- readme: skip -->       not compiled (only for text that must not compile, e.g. a rejected call)
    Several words may share one comment: `<!-- readme: namespace mpi -->`.
Each block is compiled on its own with `#line` directives, so diagnostics name README.md and its line.
"""

import argparse
import os
import re
import subprocess
import sys
import time

FENCE_OPEN = re.compile(r"^```\s*(\S*)\s*$")
MARKER = re.compile(r"^<!--\s*readme:\s*([a-z ]+?)\s*-->\s*$")
KNOWN_MARKS = {"namespace", "mpi", "skip"}
HAS_MAIN = re.compile(r"\bint\s+main\s*\(")


def extract(readme):
    """Yields (line number of the first code line, marks, code) for each ```cpp block."""
    with open(readme, encoding="utf-8") as f:
        lines = f.read().split("\n")
    blocks = []
    i = 0
    while i < len(lines):
        m = FENCE_OPEN.match(lines[i])
        if not m:
            i += 1
            continue
        language = m.group(1).lower()
        start = i + 1
        end = start
        while end < len(lines) and not lines[end].startswith("```"):
            end += 1
        if end == len(lines):
            sys.exit(f"{readme}:{i + 1}: code fence is never closed")
        if language in ("cpp", "c++", "cxx"):
            marks = set()
            if i > 0:
                mm = MARKER.match(lines[i - 1])
                if mm:
                    marks = set(mm.group(1).split())
                    unknown = marks - KNOWN_MARKS
                    if unknown:
                        sys.exit(f"{readme}:{i}: unknown readme marker(s) {sorted(unknown)}; "
                                 f"known: {sorted(KNOWN_MARKS)}")
            blocks.append((start + 1, marks, "\n".join(lines[start:end])))
        i = end + 1
    return blocks


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--readme", required=True)
    parser.add_argument("--compiler", required=True)
    parser.add_argument("--include", required=True, help="procpool's include directory")
    parser.add_argument("--prelude", required=True)
    parser.add_argument("--workdir", required=True)
    parser.add_argument("--mpi-include", default="", help="MPI include directories, ';'-separated; empty: no MPI")
    parser.add_argument("--mpi-defines", default="", help="MPI compile definitions, ';'-separated")
    parser.add_argument("--mpi-found", default="0", help="1 when MPI was found")
    args = parser.parse_args()

    os.makedirs(args.workdir, exist_ok=True)
    readme = os.path.abspath(args.readme)
    prelude = os.path.abspath(args.prelude)
    flags = ["-std=c++20", "-Wall", "-Wextra", "-Wpedantic", "-Werror", "-pthread", "-I" + args.include]
    mpi_found = args.mpi_found.upper() in ("1", "ON", "TRUE", "YES")
    mpi_flags = (["-I" + d for d in args.mpi_include.split(";") if d] +
                 ["-D" + d for d in args.mpi_defines.split(";") if d])

    # The prelude is precompiled once (fragments include it first, with the same flags); if GCC finds the
    # precompiled header unusable it silently reads prelude.hpp instead, which is only slower.
    local_prelude = os.path.join(args.workdir, "prelude.hpp")
    with open(prelude, encoding="utf-8") as src, open(local_prelude, "w", encoding="utf-8") as dst:
        dst.write(src.read())
    pch = subprocess.run([args.compiler] + flags + ["-x", "c++-header", local_prelude, "-o", local_prelude + ".gch"],
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if pch.returncode != 0:
        print(f"{prelude} does not compile:\n{pch.stdout}")
        return 1

    blocks = extract(readme)
    if not blocks:
        sys.exit(f"{readme}: no ```cpp block found (is the path right?)")
    failures, compiled, skipped = [], 0, 0
    for line, marks, code in blocks:
        where = f"README.md:{line}"
        if "skip" in marks:
            print(f"{where}: skipped (readme: skip)")
            skipped += 1
            continue
        needs_mpi = "mpi" in marks or "procpool/mpi.hpp" in code
        if needs_mpi and not mpi_found:
            print(f"{where}: skipped (needs MPI, which CMake did not find)")
            skipped += 1
            continue
        complete = HAS_MAIN.search(code) is not None
        source = os.path.join(args.workdir, f"block_{line}.cpp")
        with open(source, "w", encoding="utf-8") as out:
            if complete:
                out.write(f'#line {line} "{readme}"\n{code}\n')
            elif "namespace" in marks:
                out.write(f'#include "prelude.hpp"\n#line {line} "{readme}"\n{code}\n')
            else:
                # The inner braces let a fragment declare its own `pool`.
                out.write(f'#include "prelude.hpp"\n'
                          f"void readme_block_{line}([[maybe_unused]] procpool::Pool& pool) {{ {{\n"
                          f'#line {line} "{readme}"\n{code}\n}} }}\n')
        command = [args.compiler] + flags + (mpi_flags if needs_mpi else [])
        if complete and not needs_mpi:
            kind = "complete program, compiled and linked"
            command += [source, "-o", os.path.join(args.workdir, f"block_{line}")]
        else:
            kind = ("complete program" if complete else
                    "namespace-scope fragment" if "namespace" in marks else "fragment") + ", syntax only"
            command += ["-fsyntax-only", source]
        started = time.monotonic()
        result = subprocess.run(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        seconds = time.monotonic() - started
        compiled += 1
        if result.returncode == 0:
            print(f"{where}: ok ({kind}{', MPI' if needs_mpi else ''}, {seconds:.1f} s)")
        else:
            print(f"{where}: FAILED ({kind}): the block starting at README.md line {line} does not compile\n"
                  f"  command: {' '.join(command)}\n{result.stdout}")
            failures.append(line)
        sys.stdout.flush()

    print(f"{len(blocks)} cpp blocks: {compiled} compiled, {skipped} skipped, {len(failures)} failed")
    if failures:
        print("failing blocks start at README.md lines: " + ", ".join(str(n) for n in failures))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
