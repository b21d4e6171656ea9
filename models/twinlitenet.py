"""TwinLiteNet (drivable area + lane lines, BDD100K), re-implemented from the paper's layer layout.

Upstream: https://github.com/chequanghuy/TwinLiteNet (``model/TwinLite.py``, MIT). This is our own
code, but module attribute names follow upstream on purpose so that the published state dict
(``pretrained/best.pth``, keys prefixed ``module.`` by DataParallel) loads without any key remapping,
and a mismatch error names keys exactly as they appear in the file.

Shape walk-through for the 360x640 input:

    input 3x360x640 --level1 (s2)--> 16x180x320 (+ 3ch avg-pooled image) --b1--> 19
                    --level2_0 (s2)--> 64x90x160 --2 ESP blocks--> 64 (+64 skip +3 image) --b2--> 131
                    --level3_0 (s2)--> 128x45x80 --3 ESP blocks--> 128 (+128 skip) --b3--> 32x45x80
                    --position attention + channel attention, summed--> 32x45x80
    two heads, each 3 x (2x2 transposed conv, stride 2): 32 -> 16 -> 8 -> 2 at 360x640 (da, ll).
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from segengine.models.card import ModelCard, Preprocess
from segengine.models.checkpoint import load_into, load_state_dict, strip_prefix

CARD = ModelCard(
    name="twinlitenet",
    task="lanes+drivable",
    summary="TwinLiteNet (0.44 M params): drivable-area and lane-line segmentation, trained on BDD100K.",
    classes=("drivable", "lane"),
    input_size=(360, 640),
    preprocess=Preprocess(resize="stretch"),  # RGB / 255, no mean/std
    raw_outputs=("da", "ll"),
    filename="twinlitenet_best.pth",
    url="https://raw.githubusercontent.com/chequanghuy/TwinLiteNet/"
    "524141821c373c886443cf4254e3e87787c2c55e/pretrained/best.pth",
    sha256="98ffc6c8abc98fda72052117249ce4e2dbc85e58cfcfc6ee2d42f5398c772463",
    size_bytes=1837662,
    licence="MIT",
    upstream="https://github.com/chequanghuy/TwinLiteNet",
    accuracy=(
        "drivable vs CamVid Road IoU 0.716 on the 12 camvid12 frames "
        "(upstream: 0.802 on the full 233-frame test split)"
    ),
)

_BN_EPS = 1e-3  # upstream uses 1e-3 everywhere, not PyTorch's default 1e-5
_WHAT = "TwinLiteNet weights"


class _Conv(nn.Module):
    """A bias-free 'same' convolution, wrapped only so its weight is named ``<name>.conv.weight``."""

    def __init__(self, c_in: int, c_out: int, k: int, stride: int = 1, dilation: int = 1) -> None:
        super().__init__()
        pad = (k - 1) // 2 * dilation
        self.conv = nn.Conv2d(c_in, c_out, k, stride=stride, padding=pad, dilation=dilation, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(x)


class _BNPReLU(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        self.bn = nn.BatchNorm2d(c, eps=_BN_EPS)
        self.act = nn.PReLU(c)

    def forward(self, x: Tensor) -> Tensor:
        return self.act(self.bn(x))


class _ConvBNPReLU(_BNPReLU):
    """conv -> BN -> PReLU (upstream's CBR); keys ``conv.weight``, ``bn.*``, ``act.weight``."""

    def __init__(self, c_in: int, c_out: int, k: int, stride: int = 1) -> None:
        super().__init__(c_out)
        self.conv = nn.Conv2d(c_in, c_out, k, stride=stride, padding=(k - 1) // 2, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        return self.act(self.bn(self.conv(x)))


class _UpBNPReLU(_BNPReLU):
    """2x2 transposed conv, stride 2 (exact 2x upsampling) -> BN -> PReLU (upstream's UPx2)."""

    def __init__(self, c_in: int, c_out: int) -> None:
        super().__init__(c_out)
        self.deconv = nn.ConvTranspose2d(c_in, c_out, 2, stride=2, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        return self.act(self.bn(self.deconv(x)))


class _ESPBranches(nn.Module):
    """ESP core: reduce with ``c1``, five parallel dilated 3x3 convs (d=1,2,4,8,16), merge.

    The dilated outputs d2..d16 are summed cumulatively before concatenation ("hierarchical
    feature fusion"), which removes the gridding artefacts of large dilations. Output channels are
    ``n1 + 4n`` with ``n = c_out // 5`` and ``n1`` taking the remainder, so the total is exactly c_out.
    """

    def __init__(self, c_in: int, c_out: int, reduce_k: int, reduce_stride: int) -> None:
        super().__init__()
        n = max(c_out // 5, 1)
        n1 = c_out - 4 * n
        self.c1 = _Conv(c_in, n, reduce_k, reduce_stride)
        self.d1 = _Conv(n, n1, 3, dilation=1)
        self.d2 = _Conv(n, n, 3, dilation=2)
        self.d4 = _Conv(n, n, 3, dilation=4)
        self.d8 = _Conv(n, n, 3, dilation=8)
        self.d16 = _Conv(n, n, 3, dilation=16)

    def branches(self, x: Tensor) -> Tensor:
        r = self.c1(x)
        s2 = self.d2(r)
        s4 = s2 + self.d4(r)
        s8 = s4 + self.d8(r)
        s16 = s8 + self.d16(r)
        return torch.cat([self.d1(r), s2, s4, s8, s16], dim=1)


class _ESPDown(_ESPBranches):
    """Strided ESP block (upstream's DownSamplerB): 3x3/s2 reduce, no residual, BN + PReLU."""

    def __init__(self, c_in: int, c_out: int) -> None:
        super().__init__(c_in, c_out, reduce_k=3, reduce_stride=2)
        self.bn = nn.BatchNorm2d(c_out, eps=_BN_EPS)
        self.act = nn.PReLU(c_out)

    def forward(self, x: Tensor) -> Tensor:
        return self.act(self.bn(self.branches(x)))


class _ESPResidual(_ESPBranches):
    """ESP block with identity residual (upstream's DilatedParllelResidualBlockB, add=True)."""

    def __init__(self, c: int) -> None:
        super().__init__(c, c, reduce_k=1, reduce_stride=1)
        self.bn = _BNPReLU(c)  # nested, hence keys ``bn.bn.*`` and ``bn.act.weight``

    def forward(self, x: Tensor) -> Tensor:
        return self.bn(x + self.branches(x))


class _PositionAttention(nn.Module):
    """Spatial self-attention over all H*W positions (DANet's PAM): x + gamma * attend(x)."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.query_conv = nn.Conv2d(c, c // 8, 1)
        self.key_conv = nn.Conv2d(c, c // 8, 1)
        self.value_conv = nn.Conv2d(c, c, 1)
        self.gamma = nn.Parameter(torch.zeros(1))

    def forward(self, x: Tensor) -> Tensor:
        q = self.query_conv(x).flatten(2)  # B x C/8 x HW
        k = self.key_conv(x).flatten(2)  # B x C/8 x HW
        v = self.value_conv(x).flatten(2)  # B x C x HW
        attn = torch.softmax(torch.bmm(q.transpose(1, 2), k), dim=-1)  # B x HW(query) x HW(key)
        out = torch.bmm(v, attn.transpose(1, 2))  # each position: attention-weighted sum of values
        return self.gamma * out.reshape(x.shape) + x


class _ChannelAttention(nn.Module):
    """Channel self-attention (DANet's CAM): x + gamma * attend(x), no learned projections."""

    def __init__(self) -> None:
        super().__init__()
        self.gamma = nn.Parameter(torch.zeros(1))

    def forward(self, x: Tensor) -> Tensor:
        f = x.flatten(2)  # B x C x HW
        energy = torch.bmm(f, f.transpose(1, 2))  # B x C x C
        # DANet feeds (row max - energy) to the softmax, i.e. it favours *dissimilar* channels.
        attn = torch.softmax(energy.amax(dim=-1, keepdim=True) - energy, dim=-1)
        return self.gamma * torch.bmm(attn, f).reshape(x.shape) + x


def _avg_down(x: Tensor) -> Tensor:
    # 3x3/s2 average with zero padding counted in the mean (count_include_pad=True, as upstream).
    return F.avg_pool2d(x, 3, stride=2, padding=1)


class _Encoder(nn.Module):
    """ESPNet-C style encoder to 1/8 resolution, topped by dual (position + channel) attention."""

    def __init__(self, p: int = 2, q: int = 3) -> None:
        super().__init__()
        self.level1 = _ConvBNPReLU(3, 16, 3, stride=2)
        self.b1 = _ConvBNPReLU(16 + 3, 19, 3)
        self.level2_0 = _ESPDown(19, 64)
        self.level2 = nn.ModuleList(_ESPResidual(64) for _ in range(p))
        self.b2 = _ConvBNPReLU(64 + 64 + 3, 131, 3)
        self.level3_0 = _ESPDown(131, 128)
        self.level3 = nn.ModuleList(_ESPResidual(128) for _ in range(q))
        self.b3 = _ConvBNPReLU(128 + 128, 32, 3)
        self.sa = _PositionAttention(32)
        self.sc = _ChannelAttention()
        self.conv_sa = _ConvBNPReLU(32, 32, 3)
        self.conv_sc = _ConvBNPReLU(32, 32, 3)
        self.classifier = _ConvBNPReLU(32, 32, 1)

    def forward(self, x: Tensor) -> Tensor:
        # The raw image, average-pooled to 1/2 and 1/4, is re-injected at each stage.
        img2 = _avg_down(x)
        img4 = _avg_down(img2)

        y = self.b1(torch.cat([self.level1(x), img2], dim=1))
        skip2 = self.level2_0(y)
        y = skip2
        for block in self.level2:
            y = block(y)
        y = self.b2(torch.cat([y, skip2, img4], dim=1))
        skip3 = self.level3_0(y)
        y = skip3
        for block in self.level3:
            y = block(y)
        y = self.b3(torch.cat([skip3, y], dim=1))  # note: skip first here, unlike stage 2
        y = self.conv_sa(self.sa(y)) + self.conv_sc(self.sc(y))
        return self.classifier(y)


class TwinLiteNet(nn.Module):
    """Shared encoder, two decoders. ``forward`` returns raw (da, ll) logits, each N x 2 x H x W."""

    def __init__(self) -> None:
        super().__init__()
        self.encoder = _Encoder(p=2, q=3)
        # Suffix _1 is the drivable-area head, _2 the lane-line head.
        self.up_1_1 = _UpBNPReLU(32, 16)
        self.up_2_1 = _UpBNPReLU(16, 8)
        self.classifier_1 = _UpBNPReLU(8, 2)
        self.up_1_2 = _UpBNPReLU(32, 16)
        self.up_2_2 = _UpBNPReLU(16, 8)
        self.classifier_2 = _UpBNPReLU(8, 2)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        z = self.encoder(x)
        da = self.classifier_1(self.up_2_1(self.up_1_1(z)))
        ll = self.classifier_2(self.up_2_2(self.up_1_2(z)))
        return da, ll


def load_network(path: Path) -> torch.nn.Module:
    """Build TwinLiteNet and load upstream's weights (``module.``-prefixed or not); eval mode, float32.

    Raises ``engine.errors.ModelError`` naming the file (and any bad keys) if it cannot be used.
    """
    path = Path(path)
    state = strip_prefix(load_state_dict(path, what=_WHAT), "module.")
    net = TwinLiteNet()
    load_into(net, state, path, what=_WHAT)
    _flush_subnormals(net)
    return net.float().eval()


@torch.no_grad()
def _flush_subnormals(net: nn.Module) -> None:
    """Set subnormal (|w| < 1.18e-38) weights and BN statistics to exactly zero.

    Upstream's checkpoint holds ~143k of them (61 % of ``encoder.b2.conv.weight``, all of the PAM
    query/key convs), presumably weights decayed towards zero during training. Their products are
    negligible (the outputs came out bit-identical on the reference image and on random inputs),
    but x86 CPUs take a slow microcode path for subnormal operands: one forward pass at 360x640
    drops from ~3 s to ~0.2 s on CPU (2 threads).
    """
    tiny = torch.finfo(torch.float32).tiny
    for t in net.state_dict().values():  # state_dict tensors share storage with the module
        if t.is_floating_point():
            t.masked_fill_(t.abs() < tiny, 0.0)
