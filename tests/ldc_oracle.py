"""LDC's official module structure rebuilt from ``torch.nn``, loaded with our parameters.

The PyTorch oracle of ``test_ldc_model.py`` (imported there at first use: this
module needs torch).
"""

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


def _linear(kernel):
    layer = nn.Linear(*kernel.shape, bias=False)
    layer.weight.data = torch.tensor(np.asarray(kernel).T.copy())
    return layer


def _bn(params, stats, dims):
    layer = (nn.BatchNorm2d if dims == 2 else nn.BatchNorm1d)(params["scale"].shape[0])
    layer.weight.data = torch.tensor(np.asarray(params["scale"]))
    layer.bias.data = torch.tensor(np.asarray(params["bias"]))
    layer.running_mean = torch.tensor(np.asarray(stats["mean"]))
    layer.running_var = torch.tensor(np.asarray(stats["var"]))
    return layer


def _mlp_bn(p, s):
    return nn.Sequential(_linear(p["fc1"]), _bn(p["bn"], s["bn"], 1), nn.ReLU(), _linear(p["fc2"]))


class TokenMean(nn.Module):
    def forward(self, x):
        return x.mean(dim=1)


class Oracle(nn.Module):
    """The official module structure (``clip_ldc/model.py``), built from our parameters."""

    def __init__(self, config, params, stats, proj):
        super().__init__()
        self.config = config
        self.proj = torch.tensor(np.asarray(proj))
        resnet = config.tower == "resnet"
        if config.ablation != "icd_only":
            adapters = []
            for i in range(1, 5):
                p = params["maf"][f"adapter{i}"]
                if resnet:
                    conv = nn.Conv2d(p["kernel"].shape[0], p["kernel"].shape[1], 1, bias=False)
                    kernel = np.asarray(p["kernel"]).T[:, :, None, None].copy()
                    conv.weight.data = torch.tensor(kernel)
                    pool = config.pools[i - 1]
                    adapters.append(nn.Sequential(
                        conv, _bn(p["bn"], stats["maf"][f"adapter{i}"]["bn"], 2), nn.ReLU(),
                        nn.AvgPool2d(pool) if pool > 1 else nn.Identity()))
                else:
                    norm = nn.LayerNorm(p["ln"]["scale"].shape[0])
                    norm.weight.data = torch.tensor(np.asarray(p["ln"]["scale"]))
                    norm.bias.data = torch.tensor(np.asarray(p["ln"]["bias"]))
                    adapters.append(nn.Sequential(_linear(p["kernel"]), norm, nn.ReLU(),
                                                  TokenMean()))
            self.adapters = nn.ModuleList(adapters)
            if config.fusion == "concat":
                self.concat = _mlp_bn(params["maf"]["concat"], stats["maf"]["concat"])
            if config.fusion == "learned":
                self.fusion_logits = nn.Parameter(torch.tensor(
                    np.asarray(params["maf"]["fusion_logits"])))
            self.head = _mlp_bn(params["head"], stats["head"])
        if config.ablation != "maf_only":
            self.g = nn.ModuleList([_mlp_bn(params["icd"][g], stats["icd"][g])
                                    for g in ("g1", "g2", "g3")])
        if config.ablation == "full":
            self.gw = nn.Sequential(_mlp_bn(params["alf"], stats["alf"]), nn.Sigmoid())

    def project(self, x):  # the test's frozen projector: spatial mean (ResNet), then @ proj
        return (x.mean(dim=(2, 3)) if x.ndim == 4 else x) @ self.proj

    def forward(self, taps, s, features):
        cfg = self.config
        if cfg.ablation != "icd_only":
            a = [adapter(x) for adapter, x in zip(self.adapters, taps)]
            if cfg.fusion == "concat":
                if cfg.tower == "resnet":
                    z = self.concat(torch.cat([self.project(x) for x in a], dim=1))
                else:
                    z = self.project(self.concat(torch.cat(a, dim=1)))
            else:
                w = {"fixed": torch.tensor([0.1, 0.2, 0.3, 0.4]),
                     "average": torch.full((4,), 0.25)}.get(cfg.fusion)
                w = torch.softmax(self.fusion_logits, 0) if w is None else w
                z = self.project(sum(w[i] * a[i] for i in range(4)))
            mlp = self.head(z)
        else:
            z = features
        ada = s + self.g[2](self.g[0](s) + self.g[1](z)) if cfg.ablation != "maf_only" else s
        if cfg.ablation == "full":
            w = self.gw(z)
            return mlp, ada, w * mlp + (1 - w) * ada
        return (mlp, ada, mlp) if cfg.ablation == "maf_only" else (ada, ada, ada)

    def loss(self, taps, s, features, labels):
        mlp, ada, tot = self(taps, s, features)
        if self.config.ablation == "full":  # official get_loss, all lambdas 1
            value = (F.l1_loss(mlp, s) + F.l1_loss(ada, s) + F.cross_entropy(mlp, labels)
                     + F.cross_entropy(ada, labels) + F.cross_entropy(tot, labels))
        elif self.config.ablation == "maf_only":
            value = F.cross_entropy(mlp, labels) + F.l1_loss(mlp, s)
        else:
            value = F.cross_entropy(ada, labels) + F.l1_loss(ada, s)
        return value, (mlp, ada, tot)


class DictInput(nn.Module):
    """``torch.optim.swa_utils.update_bn`` calls ``model(batch)``: unpack our batch dict."""

    def __init__(self, oracle):
        super().__init__()
        self.oracle = oracle

    def forward(self, batch):
        return self.oracle(batch["taps"], batch["s"], batch["features"])
