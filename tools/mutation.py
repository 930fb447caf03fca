"""Mutation testing of one part of padistill with mutmut (pinned in the `mutation` extra), on a scratch copy.

    pip install -e ".[mutation]"
    python tools/mutation.py OUT "src/padistill/filters/*" tests/filters tests/scores/test_ordering.py
    python tools/mutation.py --tests-from=OLD/tests OUT ...   # the same with another version of tests/

copies src/, tests/ and pyproject.toml into OUT (the working tree is never touched), writes OUT/setup.cfg with
the `[mutmut]` section for this run (mutate only the given glob, run only the given tests), runs
`mutmut run --max-children 1` (one process: the machines this project is developed on are shared) and prints
mutmut's counts and the score killed / (killed + survived + timeout + suspicious + no tests). The survivors are
listed by `cd OUT && mutmut results` and shown with `mutmut show NAME`. Not part of CI: it takes minutes per
module. Run it with a narrow test selection (the tests that exercise the module): every mutant runs the tests
that reach the mutated function.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def main(argv: list[str]) -> int:
    tests_from = REPO / "tests"
    if argv and argv[0].startswith("--tests-from="):
        tests_from = Path(argv.pop(0).split("=", 1)[1]).resolve()
    if len(argv) < 3:
        print(__doc__)
        return 2
    out, pattern, tests = Path(argv[0]).resolve(), argv[1], argv[2:]
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    for src, name in ((REPO / "src", "src"), (tests_from, "tests")):
        shutil.copytree(src, out / name, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    shutil.copy2(REPO / "pyproject.toml", out / "pyproject.toml")
    (out / "setup.cfg").write_text("[mutmut]\nsource_paths = src\n"
                                   f"only_mutate = {pattern}\n"
                                   "pytest_add_cli_args_test_selection =\n" + "".join(f"    {t}\n" for t in tests)
                                   + "also_copy =\n    tests\n    pyproject.toml\n", encoding="utf-8")
    subprocess.run(["mutmut", "run", "--max-children", "1"], cwd=out, check=False)
    subprocess.run(["mutmut", "export-cicd-stats"], cwd=out, check=True, capture_output=True)
    stats = json.loads((out / "mutants" / "mutmut-cicd-stats.json").read_text())
    bad = sum(stats.get(k, 0) for k in ("survived", "timeout", "suspicious", "no_tests"))
    score = stats["killed"] / (stats["killed"] + bad) if stats["killed"] + bad else float("nan")
    print(json.dumps({"pattern": pattern, "tests": tests, **stats, "score": round(score, 4)}))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
