"""threestudio extensions change how a text-to-3D system renders by overriding ``forward``: such a subclass still
trains through its ``forward``, while the built-in systems use the data stage's render request."""

import torch

import threestudio
from threestudio.systems.dreamfusion import DreamFusion, _defined_below


def _system(cls):
    return threestudio.find(cls, "system", "system_type") if isinstance(cls, str) else cls


def test_only_a_forward_overridden_below_render_for_training_takes_over():
    magic3d = _system("magic3d-system")

    class Ext(DreamFusion):
        def forward(self, batch):
            return {"from": "ext"}

    class ExtOfMagic3D(magic3d):
        def forward(self, batch):
            return {"from": "ext"}

    class OwnRender(DreamFusion):  # overrides both: its own render_for_training decides
        def forward(self, batch):
            return {}

        def render_for_training(self, batch):
            return {}

    assert not _defined_below(DreamFusion, "forward", "render_for_training")
    assert not _defined_below(magic3d, "forward", "render_for_training")  # magic3d defines both
    assert not _defined_below(OwnRender, "forward", "render_for_training")
    assert _defined_below(Ext, "forward", "render_for_training")
    assert _defined_below(ExtOfMagic3D, "forward", "render_for_training")


def test_an_extension_forward_renders_the_training_step():
    class Ext(DreamFusion):
        def forward(self, batch):
            return {"comp_rgb": batch["marker"] * 2}

    ext = object.__new__(Ext)
    torch.nn.Module.__init__(ext)  # enough of a module for __call__; the data stage is never reached
    out = ext.render_for_training({"marker": torch.ones(1)})
    assert torch.equal(out["comp_rgb"], torch.full((1,), 2.0))
