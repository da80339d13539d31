#!/usr/bin/env python3
"""A structural check of a Dockerfile, for images that cannot be built here (no hadolint in Debian,
no `docker build --check` in Debian's Docker 20.10).

Usage: scripts/lint_dockerfile.py DOCKERFILE [CONTEXT]   (CONTEXT: the build context, default .)

Checks that it parses into known instructions (comments and line continuations as Docker reads
them); every FROM names its image through a build arg declared before the first FROM with a default;
stage names are unique; COPY --from names an earlier stage; every COPY source exists in the context
and is not kept out by .dockerignore's plain top-level names; the last stage sets a non-root USER and
an exec-form (JSON) ENTRYPOINT. Prints one line per problem and exits 1 when there is any.
"""
import json
import os
import re
import sys

KNOWN = {"FROM", "RUN", "CMD", "LABEL", "EXPOSE", "ENV", "ADD", "COPY", "ENTRYPOINT", "VOLUME",
         "USER", "WORKDIR", "ARG", "ONBUILD", "STOPSIGNAL", "HEALTHCHECK", "SHELL", "MAINTAINER"}


def instructions(text):
    """(line number, keyword, arguments) per instruction, continuations joined."""
    out, buf, start = [], "", 0
    for n, line in enumerate(text.splitlines(), 1):
        s = line.strip()
        if not buf and (not s or s.startswith("#")):
            continue
        if buf and s.startswith("#"):  # comment lines inside a continuation are dropped
            continue
        if not buf:
            start = n
        if s.endswith("\\"):
            buf += s[:-1] + " "
            continue
        buf += s
        kw, _, args = buf.partition(" ")
        out.append((start, kw.upper(), args.strip()))
        buf = ""
    if buf:
        out.append((start, "<unterminated>", buf))
    return out


def main():
    path = sys.argv[1]
    ctx = sys.argv[2] if len(sys.argv) > 2 else "."
    problems = []

    def bad(n, msg):
        problems.append(f"{path}:{n}: {msg}")

    ignored = set()
    di = os.path.join(ctx, ".dockerignore")
    if os.path.exists(di):
        for line in open(di):
            line = line.strip()
            if line and not line.startswith("#") and not any(c in line for c in "*?[!"):
                ignored.add(line.strip("/"))

    ins = instructions(open(path).read())
    global_args, stages, last = {}, [], None
    for n, kw, args in ins:
        if kw not in KNOWN:
            bad(n, f"unknown instruction {kw}")
            continue
        if kw == "ARG" and not stages:
            name, eq, default = args.partition("=")
            global_args[name] = default if eq else None
        elif kw == "FROM":
            m = re.fullmatch(r"(?:--platform=\S+\s+)?(\S+)(?:\s+AS\s+(\S+))?", args, re.I)
            if not m:
                bad(n, f"FROM does not parse: {args}")
                continue
            image, name = m.group(1), m.group(2)
            refs = re.findall(r"\$\{?(\w+)\}?", image)
            if image in stages:
                pass  # FROM an earlier stage
            elif not refs:
                bad(n, f"FROM {image}: the base should come from a build arg")
            for r in refs:
                if r not in global_args:
                    bad(n, f"FROM uses ${r}, not declared by an ARG before the first FROM")
                elif not global_args[r]:
                    bad(n, f"ARG {r} has no default")
            if name:
                if name in stages:
                    bad(n, f"stage {name} is defined twice")
                stages.append(name)
            else:
                stages.append(f"#{len(stages)}")
            last = {"user": None, "entrypoint": None, "line": n}
        elif last is None and kw != "ARG":
            bad(n, f"{kw} before the first FROM")
        elif kw in ("COPY", "ADD"):
            words = args.split()
            opts = [w for w in words if w.startswith("--")]
            paths = [w for w in words if not w.startswith("--")]
            if len(paths) < 2:
                bad(n, f"{kw} needs a source and a destination")
                continue
            src_stage = [o.split("=", 1)[1] for o in opts if o.startswith("--from=")]
            if src_stage:
                if src_stage[0] not in stages[:-1]:
                    bad(n, f"{kw} --from={src_stage[0]}: no earlier stage of that name")
                continue
            for src in paths[:-1]:
                top = os.path.normpath(src).split(os.sep)[0]
                if top in ignored:
                    bad(n, f"{kw} {src}: kept out of the context by .dockerignore")
                elif not os.path.exists(os.path.join(ctx, src)):
                    bad(n, f"{kw} {src}: not in the build context {ctx}")
        elif kw == "USER":
            last["user"] = args
        elif kw == "ENTRYPOINT":
            try:
                ok = isinstance(json.loads(args), list)
            except ValueError:
                ok = False
            if not ok:
                bad(n, "ENTRYPOINT should be exec form (a JSON list)")
            last["entrypoint"] = args
        elif kw == "RUN" and re.search(r"apt-get install(?!.*--no-install-recommends)", args):
            bad(n, "apt-get install without --no-install-recommends")
        elif kw == "<unterminated>":
            bad(n, "line continuation runs off the end of the file")
    if not stages:
        bad(1, "no FROM")
    elif last:
        if not last["user"] or last["user"].split(":")[0] in ("root", "0"):
            bad(last["line"], "the final stage runs as root (no USER, or USER root)")
        if not last["entrypoint"]:
            bad(last["line"], "the final stage has no ENTRYPOINT")
    for p in problems:
        print(p)
    print(f"{path}: {len(ins)} instructions, stages {', '.join(stages)}: "
          f"{'ok' if not problems else f'{len(problems)} problem(s)'}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
