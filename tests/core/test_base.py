import torch.nn as nn

from threestudio.utils.base import BaseModule, BaseObject, Updateable


class Leaf(BaseModule):
    def configure(self):
        self.calls = []

    def update_step(self, epoch, global_step, on_load_weights=False):
        self.calls.append((epoch, global_step))


class Plain(Updateable):
    def __init__(self):
        self.calls = []

    def update_step(self, epoch, global_step, on_load_weights=False):
        self.calls.append(global_step)


class Tree(BaseModule):
    def configure(self):
        self.a = Leaf()
        self.blocks = nn.ModuleList([Leaf(), nn.Sequential(nn.Linear(1, 1))])
        self.table = {"p": Plain()}
        self.alias = self.a  # reached twice, updated once
        self.calls = []

    def update_step(self, epoch, global_step, on_load_weights=False):
        self.calls.append(global_step)


def test_update_step_reaches_every_child_once():
    t = Tree()
    t.do_update_step(2, 10)
    assert t.calls == [10]
    assert t.a.calls == [(2, 10)]
    assert t.blocks[0].calls == [(2, 10)]
    assert t.table["p"].calls == [10]


def test_base_object_parses_config():
    from dataclasses import dataclass

    class Obj(BaseObject):
        @dataclass
        class Config:
            scale: float = 1.0

        def configure(self, extra=None):
            self.extra = extra

    o = Obj({"scale": 3}, extra=5)
    assert o.cfg.scale == 3.0 and o.extra == 5
