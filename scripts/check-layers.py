#!/usr/bin/env python3
"""Fails when modules of a Rust crate import each other, directly or around a loop.

Dependencies point down only: a cycle between modules means neither can be understood,
tested or moved without the other. Two levels are checked, each on its own: the top-level
modules (`src/NAME.rs` and everything under `src/NAME/`, the layers of the crate) and every
file on its own. An import is any `crate::...` or `super::...` path in a file (uses, paths
in code and doc links alike), resolved to the longest module path that exists. A child
naming its own parent (`super::Shared` from `serve/holds.rs`) is not counted: the parent
declares the child, and that pair is how Rust nests modules.

    python3 scripts/check-layers.py src [more crate roots...]   # exit 1 on any cycle
    python3 scripts/check-layers.py --graph src                # the top-level imports
    python3 scripts/check-layers.py --self-test
"""

import os
import re
import sys
import tempfile

PATH = re.compile(r"\b((?:crate|super)(?:::[A-Za-z_][A-Za-z0-9_]*)+)")


def modules(root):
    """Module path (tuple of names) -> file, for every .rs file under `root`."""
    found = {}
    for folder, _, files in os.walk(root):
        for name in files:
            if not name.endswith(".rs"):
                continue
            path = os.path.join(folder, name)
            parts = os.path.relpath(path, root)[: -len(".rs")].split(os.sep)
            if parts[-1] == "mod":
                parts = parts[:-1]
            if parts in (["lib"], ["main"]):
                parts = []
            found[tuple(parts)] = path
    return found


def resolve(mods, here, path):
    """The module a `crate::`/`super::` path written in module `here` names, or None."""
    parts = path.split("::")
    if parts[0] == "crate":
        base, parts = [], parts[1:]
    else:
        base = list(here)
        while parts and parts[0] == "super":
            base, parts = base[:-1], parts[1:]
    named = None
    for i in range(len(parts) + 1):
        if tuple(base + parts[:i]) in mods:
            named = tuple(base + parts[:i])
    return named


def imports(root):
    """(file-level edges, top-level edges) of the crate at `root`."""
    mods = modules(root)
    files = {m: set() for m in mods}
    tops = {m[:1]: set() for m in mods if m}
    for here, path in mods.items():
        with open(path, encoding="utf-8") as f:
            text = f.read()
        for written in PATH.findall(text):
            there = resolve(mods, here, written)
            if there is None or there == here:
                continue
            if here[:1] and there[:1] and here[:1] != there[:1]:
                tops[here[:1]].add(there[:1])
            if here[: len(there)] != there:
                files[here].add(there)
    return files, tops


def cycles(edges):
    """The strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on, found = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(edges.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    sys.setrecursionlimit(10_000)
    for v in sorted(edges):
        if v not in index:
            visit(v)
    return found


def name(module):
    return "::".join(module) or "crate"


def check(root):
    """Prints the cycles of the crate at `root`; True when there is none."""
    files, tops = imports(root)
    ok = True
    for level, edges in (("top-level modules", tops), ("files", files)):
        for component in cycles(edges):
            ok = False
            print(f"{root}: import cycle between {level}: " + ", ".join(map(name, component)))
            for m in component:
                inside = sorted(name(t) for t in edges[m] if t in component)
                print(f"    {name(m)} -> {', '.join(inside)}")
    return ok


def self_test():
    """A loop through three modules and one between two files are found; layers pass."""
    with tempfile.TemporaryDirectory() as tmp:
        def crate(name, files):
            root = os.path.join(tmp, name)
            for path, text in files.items():
                os.makedirs(os.path.dirname(os.path.join(root, path)), exist_ok=True)
                with open(os.path.join(root, path), "w", encoding="utf-8") as f:
                    f.write(text)
            return root

        layered = crate("layered", {
            "lib.rs": "pub mod a;\npub mod b;\n",
            "a/mod.rs": "pub mod x;\nuse crate::b::Thing;\n",
            "a/x.rs": "use super::Shared;\nuse crate::b::other::Other;\n",
            "b/mod.rs": "pub mod other;\npub struct Thing;\n",
            "b/other.rs": "pub struct Other;\n",
        })
        looped = crate("looped", {
            "lib.rs": "pub mod a;\npub mod b;\npub mod c;\n",
            "a.rs": "use crate::b::B;\n",
            "b.rs": "/// See [`crate::c::C`].\npub struct B;\n",
            "c/mod.rs": "pub mod inner;\n",
            "c/inner.rs": "fn f() { crate::a::go() }\n",
        })
        _, tops = imports(looped)
        assert cycles(tops) == [[("a",), ("b",), ("c",)]], cycles(tops)
        files, _ = imports(looped)
        assert cycles(files) == [], "no file names a file that names it back"
        siblings = crate("siblings", {
            "lib.rs": "pub mod x;\n",
            "x/mod.rs": "pub mod p;\npub mod q;\n",
            "x/p.rs": "use super::q::Q;\npub struct P;\n",
            "x/q.rs": "use super::p::P;\npub struct Q;\n",
        })
        files, tops = imports(siblings)
        assert cycles(files) == [[("x", "p"), ("x", "q")]], cycles(files)
        assert cycles(tops) == []
        assert check(layered), "a layered crate passes"
        print("check-layers self-test: cycles of modules and of files are found, layers pass")


def graph(root):
    _, tops = imports(root)
    for m in sorted(tops):
        print(f"{name(m)} -> {' '.join(sorted(name(t) for t in tops[m]))}")


if __name__ == "__main__":
    args = sys.argv[1:]
    if args == ["--self-test"]:
        self_test()
    elif args[:1] == ["--graph"] and len(args) == 2:
        graph(args[1])
    elif args and not any(a.startswith("--") for a in args):
        results = [check(root) for root in args]
        if all(results):
            print(f"no import cycle in {', '.join(args)}")
        sys.exit(0 if all(results) else 1)
    else:
        sys.exit(__doc__)
