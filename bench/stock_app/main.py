"""MONAI Label's stock path, for comparison: its LocalDatastore and its Epistemic strategy, nothing of ours.

Started by ``bench/next_sample_scale.py`` with ``monailabel start_server --app bench/stock_app``.
"""

from __future__ import annotations

import json
from pathlib import Path

from monailabel.interfaces.app import MONAILabelApp
from monailabel.interfaces.tasks.strategy import Strategy
from monailabel.tasks.activelearning.epistemic import Epistemic

TOP_N = 10


class StockApp(MONAILabelApp):
    """No models; the default datastore (LocalDatastore) and the ``epistemic`` strategy (top 10)."""

    def __init__(self, app_dir: str, studies: str, conf: dict[str, str]) -> None:
        labels = json.loads((Path(studies) / "labels.json").read_text())
        super().__init__(
            app_dir=app_dir, studies=studies, conf=conf, name="stock", description="stock MONAI Label", labels=labels
        )

    def init_strategies(self) -> dict[str, Strategy]:
        # k bounds the "top-N" list; the default (k=0: all unlabeled images) fails beyond about
        # 4,300 of them: the strategy logs 10**len(top-N), past Python's int-to-str digit limit.
        return {"epistemic": Epistemic(k=TOP_N)}
