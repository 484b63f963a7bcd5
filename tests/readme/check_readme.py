#!/usr/bin/env python3
"""Checks the documentation pages: every ```cpp block compiles, every relative link resolves.

Pages are given with --page (README.md first, then docs/*.md, benchmarks/README.md), so the manual cannot drift from
the API nor point at files or sections that do not exist. See docs/testing.md.

Code blocks:
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
Each block is compiled on its own with `#line` directives, so diagnostics name the page and its line. Blocks are
compiled --jobs at a time (2 by default).

Links: every markdown link or image whose target is a relative path must name a file or directory that exists
(relative to the page). A `#anchor` (alone, or after a path to a .md file) must name a heading of that page, by
GitHub's rule for heading ids (lower case, punctuation other than '-' and '_' dropped, spaces become '-', a
repeated heading gets -1, -2...), or an explicit <a id="..."> / <a name="...">. Links inside code are not links.
Every page but the first must also link back to the first (README.md).
"""

import argparse
import concurrent.futures
import os
import re
import subprocess
import sys
import time
import unicodedata
import urllib.parse

FENCE = re.compile(r"^(```|~~~)\s*(\S*)\s*$")
MARKER = re.compile(r"^<!--\s*readme:\s*([a-z ]+?)\s*-->\s*$")
KNOWN_MARKS = {"namespace", "mpi", "skip"}
HAS_MAIN = re.compile(r"\bint\s+main\s*\(")
HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")
CODE_SPAN = re.compile(r"(`+)(.+?)\1")
# [text](target "title") and ![alt](target); the text may hold one level of brackets.
LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\[\]]*\])*\]\(\s*(<[^>]*>|[^()\s]*(?:\([^()\s]*\)[^()\s]*)*)(?:\s+\"[^\"]*\")?\s*\)")
HTML_ANCHOR = re.compile(r"<a\s+[^>]*?(?:id|name)\s*=\s*\"([^\"]+)\"", re.IGNORECASE)
SCHEME = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*:")


def read_lines(path):
    with open(path, encoding="utf-8") as f:
        return f.read().split("\n")


def prose_lines(lines):
    """Yields (index, line) for the lines outside fenced code blocks."""
    fence = None
    for i, line in enumerate(lines):
        m = FENCE.match(line)
        if fence is None:
            if m:
                fence = m.group(1)
                continue
            yield i, line
        elif line.startswith(fence):
            fence = None


def extract(page, lines):
    """Returns (line number of the first code line, marks, code) for each ```cpp block of a page."""
    blocks = []
    i = 0
    while i < len(lines):
        m = FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        fence, language = m.group(1), m.group(2).lower()
        start = i + 1
        end = start
        while end < len(lines) and not lines[end].startswith(fence):
            end += 1
        if end == len(lines):
            sys.exit(f"{page}:{i + 1}: code fence is never closed")
        if language in ("cpp", "c++", "cxx"):
            marks = set()
            if i > 0:
                mm = MARKER.match(lines[i - 1])
                if mm:
                    marks = set(mm.group(1).split())
                    unknown = marks - KNOWN_MARKS
                    if unknown:
                        sys.exit(f"{page}:{i}: unknown readme marker(s) {sorted(unknown)}; "
                                 f"known: {sorted(KNOWN_MARKS)}")
            blocks.append((start + 1, marks, "\n".join(lines[start:end])))
        i = end + 1
    return blocks


# ---- links ----------------------------------------------------------------------------------------------------------
def github_slug(heading):
    """The id GitHub gives a heading: its text without markup, lower case, only letters, marks, numbers,
    connector punctuation ('_'), '-' and spaces kept, spaces replaced by '-'."""
    text = re.sub(r"!?\[((?:[^\[\]]|\[[^\[\]]*\])*)\]\([^)]*\)", r"\1", heading)  # a link: its text
    text = re.sub(r"<[^>]+>", "", text)  # inline HTML tags
    text = text.replace("`", "").replace("*", "")
    kept = []
    for ch in text.lower():
        category = unicodedata.category(ch)
        if ch in " -" or category[0] in "LMN" or category == "Pc":
            kept.append(ch)
    return "".join(kept).replace(" ", "-")


_anchor_cache = {}


def anchors_of(path):
    """The ids a link may name in a markdown page: its headings' slugs and explicit HTML anchors."""
    path = os.path.abspath(path)
    if path not in _anchor_cache:
        anchors, seen = set(), {}
        for _, line in prose_lines(read_lines(path)):
            m = HEADING.match(line)
            if m:
                slug = github_slug(m.group(2))
                n = seen.get(slug, 0)
                seen[slug] = n + 1
                anchors.add(slug if n == 0 else f"{slug}-{n}")
            anchors.update(HTML_ANCHOR.findall(line))
        _anchor_cache[path] = anchors
    return _anchor_cache[path]


def links_of(lines):
    """Yields (line number, target) for each inline link or image outside code."""
    for i, line in prose_lines(lines):
        text = CODE_SPAN.sub(lambda m: "x" * len(m.group(0)), line)
        for m in LINK.finditer(text):
            target = m.group(1)
            if target.startswith("<") and target.endswith(">"):
                target = target[1:-1]
            yield i + 1, target


def check_links(page, shown, lines, first_page):
    """Returns the problems of a page's links, as 'page:line: message' strings."""
    problems = []
    here = os.path.dirname(os.path.abspath(page))
    links_home = False
    for line, target in links_of(lines):
        where = f"{shown}:{line}"
        if not target:
            problems.append(f"{where}: empty link target")
            continue
        if SCHEME.match(target) or target.startswith("//"):
            continue  # a URL: not checked (the test runs offline)
        path, _, anchor = target.partition("#")
        path = urllib.parse.unquote(path)
        if path.startswith("/"):
            problems.append(f"{where}: '{target}': use a path relative to the page")
            continue
        resolved = os.path.normpath(os.path.join(here, path)) if path else os.path.abspath(page)
        if not os.path.exists(resolved):
            problems.append(f"{where}: '{target}': {os.path.relpath(resolved)} does not exist")
            continue
        if first_page is not None and resolved == first_page:
            links_home = True
        if anchor and resolved.endswith(".md") and os.path.isfile(resolved):
            anchor = urllib.parse.unquote(anchor)
            if anchor not in anchors_of(resolved):
                problems.append(f"{where}: '{target}': no heading or anchor '#{anchor}' in "
                                f"{os.path.relpath(resolved)}")
    if first_page is not None and not links_home:
        problems.append(f"{shown}: does not link back to {os.path.basename(first_page)}")
    return problems


# ---- code blocks ----------------------------------------------------------------------------------------------------
def compile_block(args, flags, mpi_flags, mpi_found, prelude_ready, page, shown, line, marks, code):
    """Compiles one block. Returns (status, message): status is 'ok', 'skipped' or 'failed'. A fragment first waits
    for `prelude_ready`, the future of the precompiled prelude (its result: None, or the compiler's complaint)."""
    where = f"{shown}:{line}"
    if "skip" in marks:
        return "skipped", f"{where}: skipped (readme: skip)"
    needs_mpi = "mpi" in marks or "procpool/mpi.hpp" in code
    if needs_mpi and not mpi_found:
        return "skipped", f"{where}: skipped (needs MPI, which CMake did not find)"
    complete = HAS_MAIN.search(code) is not None
    if not complete:
        if prelude_ready.result() is not None:
            return "failed", f"{where}: not compiled: {args.prelude} does not compile (see the end)"
    stem = re.sub(r"[^A-Za-z0-9]+", "_", shown).strip("_") + f"_{line}"
    source = os.path.join(args.workdir, f"{stem}.cpp")
    with open(source, "w", encoding="utf-8") as out:
        if complete:
            out.write(f'#line {line} "{page}"\n{code}\n')
        elif "namespace" in marks:
            out.write(f'#include "prelude.hpp"\n#line {line} "{page}"\n{code}\n')
        else:
            # The inner braces let a fragment declare its own `pool`.
            out.write(f'#include "prelude.hpp"\n'
                      f"void readme_block_{line}([[maybe_unused]] procpool::Pool& pool) {{ {{\n"
                      f'#line {line} "{page}"\n{code}\n}} }}\n')
    command = [args.compiler] + flags + (mpi_flags if needs_mpi else [])
    if complete and not needs_mpi:
        kind = "complete program, compiled and linked"
        command += [source, "-o", os.path.join(args.workdir, stem)]
    else:
        kind = ("complete program" if complete else
                "namespace-scope fragment" if "namespace" in marks else "fragment") + ", syntax only"
        command += ["-fsyntax-only", source]
    started = time.monotonic()
    result = subprocess.run(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    seconds = time.monotonic() - started
    if result.returncode == 0:
        return "ok", f"{where}: ok ({kind}{', MPI' if needs_mpi else ''}, {seconds:.1f} s)"
    return "failed", (f"{where}: FAILED ({kind}): the block starting at {shown} line {line} does not compile\n"
                      f"  command: {' '.join(command)}\n{result.stdout}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--page", "--readme", dest="pages", action="extend", nargs="+", required=True,
                        help="markdown pages to check (--page may be repeated); the first is the one every other "
                             "page must link back to")
    parser.add_argument("--compiler", help="the C++ compiler (not needed with --links-only)")
    parser.add_argument("--include", help="procpool's include directory")
    parser.add_argument("--prelude", help="the header fragments are compiled after")
    parser.add_argument("--workdir", help="where the generated sources and programs go")
    parser.add_argument("--root", default=None, help="pages are named relative to this directory in messages "
                                                     "(default: the first page's directory)")
    parser.add_argument("--jobs", type=int, default=2, help="blocks compiled at once (default 2)")
    parser.add_argument("--links-only", action="store_true", help="check the links, compile nothing")
    parser.add_argument("--mpi-include", default="", help="MPI include directories, ';'-separated; empty: no MPI")
    parser.add_argument("--mpi-defines", default="", help="MPI compile definitions, ';'-separated")
    parser.add_argument("--mpi-found", default="0", help="1 when MPI was found")
    args = parser.parse_args()
    if not args.links_only and not (args.compiler and args.include and args.prelude and args.workdir):
        parser.error("--compiler, --include, --prelude and --workdir are needed unless --links-only")

    pages = [os.path.abspath(p) for p in args.pages]
    for page in pages:
        if not os.path.isfile(page):
            sys.exit(f"{page}: no such page (is the path right?)")
    root = os.path.abspath(args.root) if args.root else os.path.dirname(pages[0])

    def shown(page):
        return os.path.relpath(page, root)

    # ---- links, first: they take no time ----
    problems = []
    for index, page in enumerate(pages):
        problems += check_links(page, shown(page), read_lines(page), None if index == 0 else pages[0])
    for problem in problems:
        print(problem)
    print(f"{len(pages)} pages: {len(problems)} link problem(s)")
    sys.stdout.flush()
    if args.links_only:
        return 1 if problems else 0

    # ---- code blocks ----
    os.makedirs(args.workdir, exist_ok=True)
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

    def precompile_prelude():
        """Returns None, or the compiler's output when the prelude does not compile."""
        pch = subprocess.run([args.compiler] + flags + ["-x", "c++-header", local_prelude, "-o",
                                                        local_prelude + ".gch"],
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        return None if pch.returncode == 0 else pch.stdout

    work = []
    for page in pages:
        blocks = extract(shown(page), read_lines(page))
        print(f"{shown(page)}: {len(blocks)} cpp block(s)")
        work += [(page, shown(page), line, marks, code) for line, marks, code in blocks]
    if not work:
        sys.exit("no ```cpp block found in any page (are the paths right?)")
    sys.stdout.flush()

    started = time.monotonic()
    counts = {"ok": 0, "skipped": 0, "failed": 0}
    failures = []
    with concurrent.futures.ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        # The prelude first, then the complete programs (the longest compiles, which do not need the prelude),
        # then the fragments (which wait for it): the executor starts them in that order.
        prelude_ready = pool.submit(precompile_prelude)
        order = sorted(range(len(work)), key=lambda i: HAS_MAIN.search(work[i][4]) is None)
        submitted = {i: pool.submit(compile_block, args, flags, mpi_flags, mpi_found, prelude_ready, *work[i])
                     for i in order}
        futures = [submitted[i] for i in range(len(work))]
        for item, future in zip(work, futures):  # reported in page order
            status, message = future.result()
            counts[status] += 1
            if status == "failed":
                failures.append(f"{item[1]}:{item[2]}")
            print(message)
            sys.stdout.flush()

    print(f"{len(work)} cpp blocks in {len(pages)} pages: {counts['ok']} compiled, {counts['skipped']} skipped, "
          f"{counts['failed']} failed ({time.monotonic() - started:.0f} s, {args.jobs} at a time)")
    if failures:
        print("failing blocks start at: " + ", ".join(failures))
    if prelude_ready.result() is not None:
        print(f"{prelude} does not compile:\n{prelude_ready.result()}")
    if problems:
        print(f"{len(problems)} link problem(s), listed above")
    return 1 if failures or problems else 0


if __name__ == "__main__":
    sys.exit(main())
