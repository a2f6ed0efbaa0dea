#!/usr/bin/env python3
"""The project's import graph: which top-level module imports which, any
import circle (exit 1 if there is one), and each module's line count.

    python scripts/import_graph.py [--markdown]

Reads the source with ast (nothing is imported or run), so function-level
imports count too: a circle through a lazy import is still a circle.
"""

import argparse
import ast
import os
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def modules():
    return sorted(f[:-3] for f in os.listdir(REPO) if f.endswith(".py"))


def imports_of(name, known):
    with open(os.path.join(REPO, name + ".py")) as f:
        tree = ast.parse(f.read())
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module.split(".")[0])
        elif isinstance(node, ast.Call) and getattr(node.func, "attr", "") == "import_module":
            found |= {a.value for a in node.args if isinstance(a, ast.Constant)}
    return sorted((found & set(known)) - {name})


def cycles(graph):
    """Every import circle, each as a list of modules."""
    found, state, stack = [], {}, []

    def visit(node):
        state[node] = "open"
        stack.append(node)
        for nxt in graph[node]:
            if state.get(nxt) == "open":
                found.append(stack[stack.index(nxt) :] + [nxt])
            elif nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = "done"

    for node in graph:
        if node not in state:
            visit(node)
    return found


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--markdown", action="store_true", help="print a table")
    args = p.parse_args()
    known = modules()
    graph = {m: imports_of(m, known) for m in known}
    lines = {m: sum(1 for _ in open(os.path.join(REPO, m + ".py"))) for m in known}
    if args.markdown:
        print("| module | lines | imports |\n| --- | ---: | --- |")
    for m in known:
        if args.markdown:
            print(f"| `{m}.py` | {lines[m]} | {', '.join(graph[m]) or '-'} |")
        else:
            print(f"{m:20} {lines[m]:4}  -> {', '.join(graph[m]) or '-'}")
    print(f"total: {sum(lines.values())} lines in {len(known)} modules")
    found = cycles(graph)
    for c in found:
        print("import circle: " + " -> ".join(c), file=sys.stderr)
    print("no import circle" if not found else f"{len(found)} import circle(s)")
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
