"""One burst of concurrent durable 3-step runs, with the trioflow of a given source tree.

``python benchmarks/burst.py TREE sqlite|postgres PATH_OR_DSN [RUNS]`` prints runs/s:
RUNS (default 1,000) runs created and started at once on one engine, timed as the
concurrent rows of `journal.py` are (it is the same code). `journal.py --baseline TREE`
runs it for this tree and for TREE, an earlier checkout, each burst in a process of its
own: two versions of trioflow cannot share one.
"""

from __future__ import annotations

import sys
from pathlib import Path

import trio


def main() -> None:
    tree, backend, target = Path(sys.argv[1]).resolve(), sys.argv[2], sys.argv[3]
    runs = int(sys.argv[4]) if len(sys.argv) > 4 else 1000
    sys.path.insert(0, str(tree))
    import trioflow

    # Not an installed trioflow that happens to come first: the tree's own.
    assert Path(trioflow.__file__).is_relative_to(tree), (trioflow.__file__, tree)
    import journal  # after trioflow: it uses the module already imported

    storage = (
        trioflow.SQLiteStorage(Path(target))
        if backend == "sqlite"
        else trioflow.PostgresStorage(target)
    )
    print(trio.run(journal.concurrent_runs, storage, runs))


if __name__ == "__main__":
    main()
