"""ESPNetv2 (s=2.0) semantic segmentation for Cityscapes, re-implemented from upstream's layer layout.

Upstream: https://github.com/sacmehta/EdgeNets (``model/segmentation/espnetv2.py``, the EESPNet
encoder in ``model/classification/espnetv2.py``, blocks in ``nn_layers/``; MIT). This is our own
code; module attribute names follow upstream on purpose so the published state dict loads without
remapping and a mismatch error names keys exactly as they appear in the file.

Shape walk-through for the fixed 512x1024 input (channels x height x width):

    level1   (CBR s2)             3 -> 32   x256x512
    level2_0 (down-sampler)          -> 128 x128x256
    level3_0 (down-sampler) + 3 EESP -> 256 x 64x128
    level4_0 (down-sampler) + 7 EESP -> 512 x 32x 64
    decoder: pyramid pool 512->64 at 32x64, then three times {x2 bilinear up, + gated projection of
    the encoder feature at that scale, BN+PReLU, pyramid pool} -> 48, 32, 20 at 256x512,
    final bilinear x2 to 20x512x1024 (align_corners=True everywhere, as upstream).

Upstream's pyramid pool uses ``adaptive_avg_pool2d`` with sizes computed from the feature size. The
input size is fixed here, so every pooling is built once as a fixed-size operation (plain average
pooling where the ratio is an integer, a weighted gather otherwise) computing the same function;
that keeps the module exportable with fully static shapes.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from segengine.models.card import ModelCard, Preprocess
from segengine.models.checkpoint import load_into, load_state_dict, strip_prefix

CARD = ModelCard(
    name="espnetv2-cityscapes",
    task="semantic",
    summary="ESPNetv2 s=2.0 (0.79 M params): Cityscapes semantic segmentation, 19 classes + background.",
    classes=(
        "road", "sidewalk", "building", "wall", "fence", "pole", "traffic light", "traffic sign",
        "vegetation", "terrain", "sky", "person", "rider", "car", "truck", "bus", "train",
        "motorcycle", "bicycle", "background",
    ),
    input_size=(512, 1024),
    preprocess=Preprocess(resize="stretch", mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225)),
    raw_outputs=("logits",),
    filename="espnetv2_s2.0_cityscapes_1024x512.pth",
    url="https://raw.githubusercontent.com/sacmehta/EdgeNets/2b232d3f7fb60658755dad1ebca0ffc895cc795e/"
    "model/segmentation/model_zoo/espnetv2/espnetv2_s_2.0_city_1024x512.pth",
    sha256="a72d59699801c7ce8e8b89a53af9097eaaa60dc12180ecde86fd700ba1222fe8",
    size_bytes=3376094,
    licence="MIT",
    upstream="https://github.com/sacmehta/EdgeNets",
    accuracy=(
        "mean IoU over Road, Pavement, Building, Car, Pedestrian, Sky, Tree mapped to CamVid: 0.726 on the 12 "
        "camvid12 frames "
        "(upstream: 0.742 on the full 233-frame test split)"
    ),
)

_WHAT = "ESPNetv2 (s=2.0) Cityscapes weights"

# Upstream's EESPNet configuration for s=2.0 (espnetv2_config.py). Only levels 1-4 are used by the
# segmentation network (level 5 and the classifier are deleted upstream), but the tables are kept
# whole so the indexing below reads like upstream's.
_CHANNELS = (32, 128, 256, 512, 1024, 1280)  # output channels of level 1..5 and the classifier input
_REPS = (0, 3, 7, 3)  # EESP blocks after the down-sampler of level 2..5
_RECEPT_LIMIT = (13, 11, 9, 7, 5)  # largest effective kernel size allowed in an EESP, per index
_K = 4  # parallel branches in every EESP block
_REINF_CH = 3  # input reinforcement: the RGB image is fed again to every down-sampler
# Decoder ('city' uses 16 base planes): 4x, 3x, 2x the base, then the classes.
_CLASSES = 20
_DEC_PLANES = (64, 48, 32, _CLASSES)
_PYR_PROJ = min(_CLASSES // 2, 16)
_PYR_SCALES = (2.0, 1.5, 1.0, 0.5, 0.1)  # upstream sorts them in descending order


def _up(x: Tensor, size: tuple[int, int]) -> Tensor:
    # Upstream resizes bilinearly with align_corners=True everywhere (also its "scale_factor=2",
    # which with align_corners=True depends only on the sizes, so an explicit size is identical).
    return F.interpolate(x, size=size, mode="bilinear", align_corners=True)


# ----------------------------------------------------------------------------- encoder blocks
class _ConvBN(nn.Module):
    """Bias-free 'same' conv -> BN (-> PReLU); keys ``conv``/``bn``/``act`` as upstream's CB/CBR."""

    def __init__(self, c_in: int, c_out: int, k: int, stride: int = 1, groups: int = 1, act: bool = True) -> None:
        super().__init__()
        self.conv = nn.Conv2d(c_in, c_out, k, stride=stride, padding=(k - 1) // 2, groups=groups, bias=False)
        self.bn = nn.BatchNorm2d(c_out)
        self.act = nn.PReLU(c_out) if act else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        return self.act(self.bn(self.conv(x)))


class _DWDilated(nn.Module):
    """Depth-wise dilated 3x3 conv (upstream's CDilated); key ``conv.weight``."""

    def __init__(self, c: int, stride: int, dilation: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(c, c, 3, stride=stride, padding=dilation, dilation=dilation, groups=c, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(x)


class _BNAct(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        self.bn = nn.BatchNorm2d(c)
        self.act = nn.PReLU(c)

    def forward(self, x: Tensor) -> Tensor:
        return self.act(self.bn(x))


class EESP(nn.Module):
    """Reduce (group 1x1) -> split into K depth-wise dilated 3x3 branches -> hierarchical fusion ->
    BN+PReLU -> group 1x1 expansion; residual + PReLU unless it is a down-sampler's stride-2 branch."""

    def __init__(self, c_in: int, c_out: int, stride: int, k: int, r_lim: int, downsample: bool = False) -> None:
        super().__init__()
        n = c_out // k
        if n * k != c_out:
            raise ValueError(f"EESP needs c_out ({c_out}) divisible by k ({k})")
        self.stride = stride
        self.downsample = downsample
        self.proj_1x1 = _ConvBN(c_in, n, 1, groups=k)
        # Effective kernel sizes 3, 5, 7, ... capped at r_lim (falling back to 3), sorted so the
        # plain 3x3 branches come first; a 3x3 kernel with dilation d covers 2d+1 pixels.
        k_sizes = sorted(3 + 2 * i if 3 + 2 * i <= r_lim else 3 for i in range(k))
        self.spp_dw = nn.ModuleList(_DWDilated(n, stride, (ks - 1) // 2) for ks in k_sizes)
        self.conv_1x1_exp = _ConvBN(c_out, c_out, 1, groups=k, act=False)
        self.br_after_cat = _BNAct(c_out)
        self.module_act = nn.PReLU(c_out)  # present (and in the weights) even where unused

    def forward(self, x: Tensor) -> Tensor:
        reduced = self.proj_1x1(x)
        branches = [self.spp_dw[0](reduced)]
        for conv in list(self.spp_dw)[1:]:  # hierarchical feature fusion: running sum of branches
            branches.append(conv(reduced) + branches[-1])
        out = self.conv_1x1_exp(self.br_after_cat(torch.cat(branches, dim=1)))
        if self.downsample:
            return out  # the down-sampler concatenates, adds and activates itself
        if out.shape == x.shape:
            out = out + x
        return self.module_act(out)


class DownSampler(nn.Module):
    """Stride-2 block: concat(avg-pool(x), EESP_s2(x)) + projection of the image pooled to the
    same size ("input reinforcement"), then PReLU."""

    def __init__(self, c_in: int, c_out: int, k: int, r_lim: int) -> None:
        super().__init__()
        self.eesp = EESP(c_in, c_out - c_in, stride=2, k=k, r_lim=r_lim, downsample=True)
        self.inp_reinf = nn.Sequential(
            _ConvBN(_REINF_CH, _REINF_CH, 3), _ConvBN(_REINF_CH, c_out, 1, act=False)
        )
        self.act = nn.PReLU(c_out)

    def forward(self, x: Tensor, image: Tensor) -> Tensor:
        """``image`` is the input image already average-pooled to this block's output size."""
        pooled = F.avg_pool2d(x, kernel_size=3, stride=2, padding=1)
        out = torch.cat([pooled, self.eesp(x)], dim=1)
        return self.act(out + self.inp_reinf(image))


class Encoder(nn.Module):
    """EESPNet levels 1-4 (upstream's ``base_net`` without level 5 and the classifier)."""

    def __init__(self) -> None:
        super().__init__()
        ch, r = _CHANNELS, _RECEPT_LIMIT
        self.level1 = _ConvBN(3, ch[0], 3, stride=2)
        # The receptive-field indices below are upstream's, including their irregular pattern.
        self.level2_0 = DownSampler(ch[0], ch[1], _K, r[0])
        self.level3_0 = DownSampler(ch[1], ch[2], _K, r[1])
        self.level3 = nn.ModuleList(EESP(ch[2], ch[2], 1, _K, r[2]) for _ in range(_REPS[1]))
        self.level4_0 = DownSampler(ch[2], ch[3], _K, r[2])
        self.level4 = nn.ModuleList(EESP(ch[3], ch[3], 1, _K, r[3]) for _ in range(_REPS[2]))

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        # Upstream re-pools the image from full size inside every down-sampler until it matches;
        # pooling the same chain once and reusing it is the identical computation.
        images: list[Tensor] = []
        img = x
        for _ in range(4):
            img = F.avg_pool2d(img, kernel_size=3, stride=2, padding=1)
            images.append(img)
        l1 = self.level1(x)
        l2 = self.level2_0(l1, images[1])
        l3 = self.level3_0(l2, images[2])
        for block in self.level3:
            l3 = block(l3)
        l4 = self.level4_0(l3, images[3])
        for block in self.level4:
            l4 = block(l4)
        return l1, l2, l3, l4


# ----------------------------------------------------------------------------- decoder blocks
class _SeqCBR(nn.Module):
    """conv -> BN -> PReLU held as ``cbr.0/1/2`` (nn_layers/cnn_utils.py naming)."""

    def __init__(self, c_in: int, c_out: int, k: int, groups: int = 1) -> None:
        super().__init__()
        self.cbr = nn.Sequential(
            nn.Conv2d(c_in, c_out, k, padding=(k - 1) // 2, groups=groups, bias=False),
            nn.BatchNorm2d(c_out),
            nn.PReLU(c_out),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.cbr(x)


class _SeqBR(nn.Module):
    """BN -> PReLU held as ``br.0/1``."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.br = nn.Sequential(nn.BatchNorm2d(c), nn.PReLU(c))

    def forward(self, x: Tensor) -> Tensor:
        return self.br(x)


class _ChannelShuffle(nn.Module):
    def __init__(self, groups: int) -> None:
        super().__init__()
        self.groups = groups

    def forward(self, x: Tensor) -> Tensor:
        n, c, h, w = x.shape
        return x.reshape(n, self.groups, c // self.groups, h, w).transpose(1, 2).reshape(n, c, h, w)


class _GlobalAvgPool(nn.Module):
    def forward(self, x: Tensor) -> Tensor:
        return x.mean(dim=(2, 3), keepdim=True)


def _adaptive_windows(n_in: int, n_out: int) -> tuple[Tensor, Tensor]:
    """Indices (n_out, k_max) and weights of adaptive_avg_pool's windows along one axis.

    PyTorch's window i is [floor(i*n_in/n_out), ceil((i+1)*n_in/n_out)); windows shorter than the
    longest are padded with their first index and weight 0.
    """
    spans = [((i * n_in) // n_out, -(-((i + 1) * n_in) // n_out)) for i in range(n_out)]
    k_max = max(e - s for s, e in spans)
    idx = torch.tensor([[s + min(j, e - s - 1) for j in range(k_max)] for s, e in spans], dtype=torch.long)
    wts = torch.tensor([[1.0 / (e - s) if j < e - s else 0.0 for j in range(k_max)] for s, e in spans])
    return idx, wts


class FixedAdaptiveAvgPool2d(nn.Module):
    """``F.adaptive_avg_pool2d(x, out_hw)`` for inputs of the fixed size ``in_hw``.

    Integer ratios become a plain average pool; otherwise the (separable) window means are taken with
    one gather and a weighted sum per axis, which exports to ONNX with static shapes.
    """

    def __init__(self, in_hw: tuple[int, int], out_hw: tuple[int, int]) -> None:
        super().__init__()
        self.in_hw, self.out_hw = in_hw, out_hw
        self.kernel: tuple[int, int] | None = None
        if in_hw[0] % out_hw[0] == 0 and in_hw[1] % out_hw[1] == 0:
            self.kernel = (in_hw[0] // out_hw[0], in_hw[1] // out_hw[1])
            return
        # Non-persistent: derived from the sizes, not part of upstream's state dict.
        for axis, n_in, n_out in (("h", in_hw[0], out_hw[0]), ("w", in_hw[1], out_hw[1])):
            idx, wts = _adaptive_windows(n_in, n_out)
            self.register_buffer(f"idx_{axis}", idx.flatten(), persistent=False)
            self.register_buffer(f"wts_{axis}", wts, persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        if tuple(x.shape[2:]) != self.in_hw:
            raise ValueError(f"expected a {self.in_hw} feature map, got {tuple(x.shape[2:])}")
        if self.kernel is not None:
            return F.avg_pool2d(x, self.kernel, self.kernel)
        n, c = x.shape[:2]
        (ho, wo), (_, wi) = self.out_hw, self.in_hw
        kh, kw = self.wts_h.shape[1], self.wts_w.shape[1]
        x = x.index_select(2, self.idx_h).reshape(n, c, ho, kh, wi)
        x = (x * self.wts_h.reshape(ho, kh, 1)).sum(dim=3)
        x = x.index_select(3, self.idx_w).reshape(n, c, ho, wo, kw)
        return (x * self.wts_w).sum(dim=4)


class EfficientPyrPool(nn.Module):
    """Project to few channels, run a depth-wise 3x3 at five scales (resize -> conv -> resize back),
    merge (BN+PReLU, channel shuffle, group CBR, 1x1), optionally BN+PReLU."""

    def __init__(self, c_in: int, c_proj: int, c_out: int, hw: tuple[int, int], last_br: bool = True) -> None:
        super().__init__()
        self.hw = hw
        self.projection_layer = _SeqCBR(c_in, c_proj, 1)
        self.stages = nn.ModuleList(
            nn.Conv2d(c_proj, c_proj, 3, padding=1, groups=c_proj, bias=False) for _ in _PYR_SCALES
        )
        n = len(_PYR_SCALES)
        self.merge_layer = nn.Sequential(
            _SeqBR(c_proj * n),
            _ChannelShuffle(n),
            _SeqCBR(c_proj * n, c_proj, 3, groups=c_proj),
            nn.Conv2d(c_proj, c_out, 1, bias=not last_br),
        )
        self.br = _SeqBR(c_out) if last_br else None
        # Per scale: the resized size (upstream: ceil(size * scale), at least 5) and the fixed pool
        # that takes the feature down (scale < 1: before the conv; > 1: back after it).
        self.sizes: list[tuple[int, int]] = []
        pools: list[nn.Module] = []
        for s in _PYR_SCALES:
            size = (max(math.ceil(hw[0] * s), 5), max(math.ceil(hw[1] * s), 5))
            self.sizes.append(size)
            if s < 1.0:
                pools.append(FixedAdaptiveAvgPool2d(hw, size))
            elif s > 1.0:
                pools.append(FixedAdaptiveAvgPool2d(size, hw))
            else:
                pools.append(nn.Identity())
        self.pools = nn.ModuleList(pools)

    def forward(self, x: Tensor) -> Tensor:
        x = self.projection_layer(x)
        outs = []
        for s, size, conv, pool in zip(_PYR_SCALES, self.sizes, self.stages, self.pools):
            if s < 1.0:
                outs.append(_up(conv(pool(x)), self.hw))
            elif s > 1.0:
                outs.append(pool(conv(_up(x, size))))
            else:
                outs.append(conv(x))
        out = self.merge_layer(torch.cat(outs, dim=1))
        return self.br(out) if self.br is not None else out


class EfficientPWConv(nn.Module):
    """Group 3x3 CBR (groups = gcd(in, out)) gated per channel by sigmoid(1x1(global mean))."""

    def __init__(self, c_in: int, c_out: int) -> None:
        super().__init__()
        self.wt_layer = nn.Sequential(_GlobalAvgPool(), nn.Conv2d(c_in, c_out, 1, bias=False), nn.Sigmoid())
        self.expansion_layer = _SeqCBR(c_in, c_out, 3, groups=math.gcd(c_in, c_out))

    def forward(self, x: Tensor) -> Tensor:
        return self.expansion_layer(x) * self.wt_layer(x)


# ----------------------------------------------------------------------------- the network
class ESPNetv2Seg(nn.Module):
    """ESPNetv2 segmentation for a fixed input size; ``forward`` returns ``(logits,)``."""

    def __init__(self, input_size: tuple[int, int] = CARD.input_size) -> None:
        super().__init__()
        h, w = input_size
        if h % 16 or w % 16:
            raise ValueError(f"input size {input_size} must be a multiple of 16")
        self.input_size = (h, w)
        ch, dec = _CHANNELS, _DEC_PLANES
        self.base_net = Encoder()
        self.bu_dec_l1 = EfficientPyrPool(ch[3], _PYR_PROJ, dec[0], (h // 16, w // 16))
        self.bu_dec_l2 = EfficientPyrPool(dec[0], _PYR_PROJ, dec[1], (h // 8, w // 8))
        self.bu_dec_l3 = EfficientPyrPool(dec[1], _PYR_PROJ, dec[2], (h // 4, w // 4))
        self.bu_dec_l4 = EfficientPyrPool(dec[2], _PYR_PROJ, dec[3], (h // 2, w // 2), last_br=False)
        self.merge_enc_dec_l2 = EfficientPWConv(ch[2], dec[0])
        self.merge_enc_dec_l3 = EfficientPWConv(ch[1], dec[1])
        self.merge_enc_dec_l4 = EfficientPWConv(ch[0], dec[2])
        self.bu_br_l2 = nn.Sequential(nn.BatchNorm2d(dec[0]), nn.PReLU(dec[0]))
        self.bu_br_l3 = nn.Sequential(nn.BatchNorm2d(dec[1]), nn.PReLU(dec[1]))
        self.bu_br_l4 = nn.Sequential(nn.BatchNorm2d(dec[2]), nn.PReLU(dec[2]))

    def forward(self, x: Tensor) -> tuple[Tensor]:
        if tuple(x.shape[2:]) != self.input_size or x.shape[1] != 3:
            raise ValueError(f"expected N x 3 x {self.input_size[0]} x {self.input_size[1]}, got {tuple(x.shape)}")
        l1, l2, l3, l4 = self.base_net(x)
        out = self.bu_dec_l1(l4)
        for skip, merge, br, dec in (
            (l3, self.merge_enc_dec_l2, self.bu_br_l2, self.bu_dec_l2),
            (l2, self.merge_enc_dec_l3, self.bu_br_l3, self.bu_dec_l3),
            (l1, self.merge_enc_dec_l4, self.bu_br_l4, self.bu_dec_l4),
        ):
            out = _up(out, (skip.shape[2], skip.shape[3]))
            out = dec(br(merge(skip) + out))
        return (_up(out, self.input_size),)


def load_network(path: Path) -> torch.nn.Module:
    """ESPNetv2Seg with the weights in ``path``, in eval mode, float32 (ModelError on a bad file)."""
    path = Path(path)
    state = strip_prefix(load_state_dict(path, what=_WHAT), "module.")
    net = ESPNetv2Seg()
    load_into(net, state, path, what=_WHAT)
    return net.float().eval()
