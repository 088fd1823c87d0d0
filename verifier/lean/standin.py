"""A replay stand-in for the Lean REPL, for tests on machines without a Lean toolchain.

    python -m verifier.lean.standin --transcripts DIR [--extra RULES.json]

This is NOT Lean and never says it is: it elaborates nothing. It speaks the REPL's wire
protocol faithfully (blank-line framed JSON in, pretty JSON + blank line out, lines of a
request right-trimmed and joined like the REPL joins them, death with an uncaught error on
a request that is not JSON, exit at end of input) and answers each request with a reply that
a real REPL once gave:

1. ``--extra`` rules (a JSON list, checked first, in order), for scenarios a test needs:
   ``{"cmd_regex": "...", "reply": {...}}`` answers with ``reply``, where the string
   ``"$env"`` becomes the environment number this process allocates next and other strings
   are expanded with the regex groups (``\\g<name>``); ``"action"`` may instead be
   ``"sleep"`` (never answer), ``"exit"`` (die with ``exit_code``, writing ``stderr``),
   ``"garbage"`` (write ``text`` then a blank line, not JSON); a reply's
   ``"$prefix_replies"`` list is written as extra replies before it (forgery scenarios);
2. transcript replay: when the requests this process has seen so far are a prefix of a
   recorded ``X.in``, the next recorded reply of ``X.expected.out``;
3. the recorded reply of the same request (all fields but ``env`` equal) in any transcript,
   renumbered: ``env`` and ``proofState`` ids are the next ones this process allocates,
   as the REPL allocates them;
4. otherwise ``{"message": "stand-in: no recorded reply ..."}`` (a refusal).

A request naming an environment that this process never allocated gets the REPL's
``{"message": "Unknown environment."}``.
"""

from __future__ import annotations

import argparse
import copy
import json
import re
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from verifier.lean import protocol


def load_transcripts(directory: str | Path) -> list[tuple[str, list[dict], list[dict]]]:
    """(name, requests, replies) for every X.in with an X.expected.out of the same length."""
    out = []
    for inp in sorted(Path(directory).glob("*.in")):
        exp = inp.with_name(inp.name[: -len(".in")] + ".expected.out")
        if not exp.is_file():
            continue
        reqs = protocol.parse_requests(inp.read_text(encoding="utf-8"))
        reps = protocol.parse_replies(exp.read_text(encoding="utf-8"))
        if len(reqs) != len(reps):
            continue
        out.append((inp.name[: -len(".in")], reqs, reps))
    return out


def _without_env(req: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in req.items() if k != "env"}


class StandIn:
    def __init__(self, transcripts: list[tuple[str, list[dict], list[dict]]], rules: list[dict]):
        self.transcripts = transcripts
        self.rules = [dict(r, _re=re.compile(r.get("cmd_regex", ""), re.DOTALL)) for r in rules]
        self.history: list[dict] = []
        self.next_env = 0
        self.next_proof_state = 0

    # -------------------------------------------------------------- answering

    def answer(self, req: dict[str, Any]) -> tuple[str, Any]:
        """("reply", obj) | ("sleep", None) | ("exit", rule) | ("garbage", text)."""
        env = req.get("env")
        cmd = req.get("cmd")
        if isinstance(cmd, str):
            for rule in self.rules:
                m = rule["_re"].search(cmd)
                if not m:
                    continue
                action = rule.get("action", "reply")
                if action != "reply":
                    return action, rule
                if isinstance(env, int) and env >= self.next_env:
                    return "reply", {"message": "Unknown environment."}
                reply = _expand(copy.deepcopy(rule["reply"]), m, self.next_env)
                return "reply", self._allocate(reply, renumber=False)
        pos = len(self.history)
        for _, reqs, reps in self.transcripts:
            if reqs[: pos + 1] == self.history + [req]:
                return "reply", self._allocate(copy.deepcopy(reps[pos]), renumber=False)
        if isinstance(env, int) and env >= self.next_env:
            return "reply", {"message": "Unknown environment."}
        key = _without_env(req)
        for _, reqs, reps in self.transcripts:
            for r, rep in zip(reqs, reps):
                if _without_env(r) == key:
                    return "reply", self._allocate(copy.deepcopy(rep), renumber=True)
        return "reply", {
            "message": "stand-in: no recorded reply for this request (this is not Lean)"
        }

    def _allocate(self, reply: dict[str, Any], *, renumber: bool) -> dict[str, Any]:
        if isinstance(reply.get("env"), int):
            if renumber:
                reply["env"] = self.next_env
            self.next_env = max(self.next_env, reply["env"] + 1)
        ids = sorted(set(_proof_state_ids(reply)))
        if ids:
            if renumber:
                mapping = {old: self.next_proof_state + i for i, old in enumerate(ids)}
                _renumber_proof_states(reply, mapping)
                ids = sorted(mapping.values())
            self.next_proof_state = max(self.next_proof_state, ids[-1] + 1)
        return reply

    # -------------------------------------------------------------- main loop

    def serve(self, stdin: Any, stdout: Any, stderr: Any) -> int:
        for block in _blocks(stdin):
            if protocol.is_skipped_block(block):
                continue
            try:
                req = protocol.parse_request_block(block)
            except protocol.ProtocolError as e:
                # the REPL throws an uncaught IO error and exits
                stderr.write("uncaught exception: " + json.dumps({"message": str(e)}) + "\n")
                stderr.flush()
                return 1
            action, arg = self.answer(req)
            if action == "sleep":
                while True:
                    time.sleep(3600)
            if action == "exit":
                if arg.get("stderr"):
                    stderr.write(arg["stderr"] + "\n")
                    stderr.flush()
                return int(arg.get("exit_code", 1))
            if action == "garbage":
                stdout.write(arg.get("text", "this is not JSON") + "\n\n")
                stdout.flush()
                self.history.append(req)
                continue
            for extra in arg.pop("$prefix_replies", []):
                # output that precedes the real reply, as if the checked code had written
                # to the process's stdout (tests of forged replies)
                stdout.write(json.dumps(extra, ensure_ascii=False, indent=1) + "\n\n")
            stdout.write(json.dumps(arg, ensure_ascii=False, indent=1) + "\n\n")
            stdout.flush()
            self.history.append(req)
        return 0


def _blocks(stdin: Any) -> Iterator[str]:
    acc: list[str] = []
    while True:
        line = stdin.readline()
        if not line:
            if acc:
                yield "".join(acc)
            return
        if line.strip(" \t\r\n") == "":
            if acc:
                yield "".join(acc)
                acc = []
        else:
            acc.append(line.rstrip(" \t\r\n"))


def _expand(obj: Any, m: re.Match, env: int) -> Any:
    if isinstance(obj, str):
        if obj == "$env":
            return env
        return re.sub(r"\\g<(\w+)>", lambda g: m.group(g.group(1)) or "", obj)
    if isinstance(obj, list):
        return [_expand(x, m, env) for x in obj]
    if isinstance(obj, dict):
        return {k: _expand(v, m, env) for k, v in obj.items()}
    return obj


def _proof_state_ids(obj: Any) -> Iterator[int]:
    if isinstance(obj, dict):
        for k, v in obj.items():
            if k == "proofState" and isinstance(v, int):
                yield v
            else:
                yield from _proof_state_ids(v)
    elif isinstance(obj, list):
        for x in obj:
            yield from _proof_state_ids(x)


def _renumber_proof_states(obj: Any, mapping: dict[int, int]) -> None:
    if isinstance(obj, dict):
        for k, v in obj.items():
            if k == "proofState" and isinstance(v, int):
                obj[k] = mapping[v]
            else:
                _renumber_proof_states(v, mapping)
    elif isinstance(obj, list):
        for x in obj:
            _renumber_proof_states(x, mapping)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--transcripts", help="directory of X.in / X.expected.out pairs")
    ap.add_argument("--extra", help="JSON file: list of canned rules")
    args = ap.parse_args(argv)
    transcripts = load_transcripts(args.transcripts) if args.transcripts else []
    rules = json.loads(Path(args.extra).read_text(encoding="utf-8")) if args.extra else []
    sys.stdin.reconfigure(encoding="utf-8", newline="\n")  # type: ignore[union-attr]
    sys.stdout.reconfigure(encoding="utf-8")  # type: ignore[union-attr]
    return StandIn(transcripts, rules).serve(sys.stdin, sys.stdout, sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
