"""Export (``--export``, or ``export_after_train``) of a system with geometry, material and background: the
exporter named by ``system.exporter_type`` turns them into files (a textured mesh for ``mesh-exporter``)."""

from __future__ import annotations

import os
from typing import Any, List

from threestudio.registry import find
from threestudio.utils.log import info


class ExportThroughExporter:
    """Mixin for ``BaseLift3DSystem``: Lightning's predict loop runs the export once."""

    def on_predict_start(self) -> None:
        self.exporter = find(self.cfg.exporter_type, "exporter", "system.exporter_type")(
            self.cfg.exporter, geometry=self.geometry, material=self.material, background=self.background
        )

    def predict_step(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> Any:
        if batch_idx == 0:
            self.export()
        return None

    def export(self) -> List[str]:
        outputs = self.exporter()
        written: List[str] = []
        for out in outputs:
            save_fn = getattr(self, f"save_{out.save_type}")
            result = save_fn(f"it{self.true_global_step}-export/{out.save_name}", **out.params)
            written += result if isinstance(result, list) else [result]
        info(f"Exported: {', '.join(os.path.relpath(p, self.get_save_dir()) for p in written if p)}")
        return written
