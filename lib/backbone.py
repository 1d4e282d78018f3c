"""Multi-modal Swin Transformer: the LAVT encoder that fuses words into every stage.

Each stage runs shifted-window Swin blocks, then a fusion layer (the Pixel-Word Attention Module,
PWAM, by default; any registered in the lib/fusion package) gives language-aware features F_i;
`norm{i}(F_i)` goes to the decoder, while `x + gate(F_i) * F_i` is patch-merged into the next stage. Any input size works: maps are zero-padded to the patch size,
to the window size (before the cyclic shift) and to even sizes for merging, and cropped back.
Parameter names follow the released LAVT checkpoints (see tests/fixtures/official_state_dict_keys.json).
"""
import torch
import torch.nn.functional as F
from timm.layers import DropPath, Mlp, trunc_normal_
from torch import nn
from torch.utils.checkpoint import checkpoint

from .fusion import PWAM, get_fusion, language_gate
from .model_config import RELEASED_DROP_PATH_RATE

# Backbone parameter names containing one of these get no weight decay in the released recipe.
NO_WEIGHT_DECAY_KEYWORDS = ("norm", "absolute_pos_embed", "relative_position_bias_table")


def relative_position_index(window_size):
    """(w*w, w*w) index into the ((2w-1)^2, heads) bias table for every pair of window positions."""
    coords = torch.stack(torch.meshgrid(torch.arange(window_size), torch.arange(window_size), indexing="ij"))
    coords = coords.flatten(1)  # (2, w*w)
    offsets = (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0) + (window_size - 1)
    return offsets[..., 0] * (2 * window_size - 1) + offsets[..., 1]


def window_partition(x, window_size):
    """(B, Hp, Wp, C) -> (B, num_windows, w*w, C), windows in row-major order."""
    batch, height, width, channels = x.shape
    x = x.view(batch, height // window_size, window_size, width // window_size, window_size, channels)
    return x.permute(0, 1, 3, 2, 4, 5).reshape(batch, -1, window_size * window_size, channels)


def window_merge(windows, window_size, height, width):
    """Inverse of `window_partition`: (B, num_windows, w*w, C) -> (B, Hp, Wp, C)."""
    batch, channels = windows.shape[0], windows.shape[-1]
    x = windows.view(batch, height // window_size, width // window_size, window_size, window_size, channels)
    return x.permute(0, 1, 3, 2, 4, 5).reshape(batch, height, width, channels)


def shifted_window_mask(padded_height, padded_width, window_size, shift_size, device=None, dtype=torch.float32):
    """(num_windows, w*w, w*w) additive mask: -100 between tokens that the cyclic shift brought
    together from different image regions, 0 otherwise. Computed on the padded map."""
    labels = torch.zeros(padded_height, padded_width, device=device)
    region = 0
    for rows in (slice(0, -window_size), slice(-window_size, -shift_size), slice(-shift_size, None)):
        for cols in (slice(0, -window_size), slice(-window_size, -shift_size), slice(-shift_size, None)):
            labels[rows, cols] = region
            region += 1
    labels = window_partition(labels[None, :, :, None], window_size)[0, ..., 0]  # (nW, w*w)
    different = labels[:, :, None] != labels[:, None, :]
    return torch.zeros(different.shape, device=device, dtype=dtype).masked_fill(different, -100.0)


class WindowAttention(nn.Module):
    """Multi-head self-attention inside windows with a learned relative position bias."""

    def __init__(self, dim, window_size, num_heads):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"WindowAttention: num_heads={num_heads} must divide the stage width dim={dim}")
        self.window_size = window_size
        self.num_heads = num_heads
        self.relative_position_bias_table = nn.Parameter(torch.zeros((2 * window_size - 1) ** 2, num_heads))
        # Saved in the checkpoint (persistent) because the released state dicts contain it.
        self.register_buffer("relative_position_index", relative_position_index(window_size))
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)
        trunc_normal_(self.relative_position_bias_table, std=0.02)

    def forward(self, windows, mask=None):
        """windows (B, nW, N, C); mask (nW, N, N) additive or None -> (B, nW, N, C)."""
        batch, num_windows, tokens, channels = windows.shape
        heads = self.num_heads
        qkv = self.qkv(windows).view(batch, num_windows, tokens, 3, heads, channels // heads)
        q, k, v = qkv.permute(3, 0, 1, 4, 2, 5).unbind(0)  # each (B, nW, heads, N, hd)
        bias = self.relative_position_bias_table[self.relative_position_index.view(-1)]
        # Contiguous: the per-window sum below then reads and writes memory in order.
        bias = bias.view(tokens, tokens, heads).permute(2, 0, 1).to(q.dtype).contiguous()  # (heads, N, N)
        if mask is not None:
            # The shift mask differs per window but not per image: fold windows into the head axis
            # so one (nW*heads, N, N) bias broadcasts over the batch instead of being copied B times.
            bias = (bias[None] + mask[:, None].to(q.dtype)).flatten(0, 1)
            q, k, v = q.flatten(1, 2), k.flatten(1, 2), v.flatten(1, 2)
        else:
            # One bias for all windows: fold windows into the batch so the bias broadcasts.
            q, k, v = q.flatten(0, 1), k.flatten(0, 1), v.flatten(0, 1)
        if q.dtype in (torch.bfloat16, torch.float16):
            # A 4-D mask admits the fused (flash) kernel, 1.5-5x faster than the math kernel on
            # Swin-B 480's windows in bf16 on CPU. fp32 keeps the 3-D mask, hence the math kernel
            # and exactly the reference's numbers.
            bias = bias[None]
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias)
        out = out.view(batch, num_windows, heads, tokens, -1).transpose(2, 3).reshape(batch, num_windows, tokens, -1)
        return self.proj(out)


class SwinBlock(nn.Module):
    """Pre-norm Swin block; `shift_size > 0` gives the shifted-window variant."""

    def __init__(self, dim, num_heads, window_size=7, shift_size=0, mlp_ratio=4.0, drop_path=0.0):
        super().__init__()
        self.window_size = window_size
        self.shift_size = shift_size
        self.norm1 = nn.LayerNorm(dim)
        self.attn = WindowAttention(dim, window_size, num_heads)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, hidden_features=int(dim * mlp_ratio), act_layer=nn.GELU)

    def forward(self, x, height, width, shift_mask):
        """x (B, H*W, C); shift_mask from `shifted_window_mask` on the padded size (used if shifted)."""
        batch, _, channels = x.shape
        w, s = self.window_size, self.shift_size
        y = self.norm1(x).view(batch, height, width, channels)
        # Pad first, then shift: the released model rolls the padded map, so pad tokens move too.
        y = F.pad(y, (0, 0, 0, (-width) % w, 0, (-height) % w))
        padded_height, padded_width = y.shape[1:3]
        if s:
            y = torch.roll(y, shifts=(-s, -s), dims=(1, 2))
        y = self.attn(window_partition(y, w), shift_mask if s else None)
        y = window_merge(y, w, padded_height, padded_width)
        if s:
            y = torch.roll(y, shifts=(s, s), dims=(1, 2))
        y = y[:, :height, :width].reshape(batch, height * width, channels)
        x = x + self.drop_path(y)
        return x + self.drop_path(self.mlp(self.norm2(x)))


class PatchEmbed(nn.Module):
    """Non-overlapping patch projection; the image is zero-padded right/bottom to the patch size."""

    def __init__(self, patch_size=4, in_chans=3, embed_dim=96):
        super().__init__()
        self.patch_size = patch_size
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)
        self.norm = nn.LayerNorm(embed_dim)

    def forward(self, image):
        """(B, 3, H, W) -> tokens (B, H'*W', C), H', W'."""
        p = self.patch_size
        image = F.pad(image, (0, (-image.shape[-1]) % p, 0, (-image.shape[-2]) % p))
        x = self.proj(image)
        height, width = x.shape[-2:]
        return self.norm(x.flatten(2).transpose(1, 2)), height, width


class PatchMerging(nn.Module):
    """2x2 neighbourhood concatenation (zero-padded to even size), LayerNorm, linear 4C -> 2C."""

    def __init__(self, dim):
        super().__init__()
        self.reduction = nn.Linear(4 * dim, 2 * dim, bias=False)
        self.norm = nn.LayerNorm(4 * dim)

    def forward(self, x, height, width):
        batch, _, channels = x.shape
        x = x.view(batch, height, width, channels)
        x = F.pad(x, (0, 0, 0, width % 2, 0, height % 2))
        x = torch.cat([x[:, 0::2, 0::2], x[:, 1::2, 0::2], x[:, 0::2, 1::2], x[:, 1::2, 1::2]], dim=-1)
        return self.reduction(self.norm(x.flatten(1, 2)))


class MultiModalStage(nn.Module):
    """One backbone stage (`layers.i`): Swin blocks, fusion, language gate, optional patch merging.

    `fusion_layer(dim, text_dim, num_heads=fusion_heads, dropout=fusion_drop)` and `gate_layer(dim)`
    build the `fusion` and `res_gate` submodules (contracts in lib/fusion/pwam.py). With
    `grad_checkpointing`, each Swin block and the fusion keep only their inputs for the backward
    pass and run again there (same gradients: the RNG state of DropPath/dropout is replayed).
    """

    def __init__(self, dim, depth, num_heads, window_size, text_dim, fusion_heads=1, fusion_drop=0.0,
                 drop_path=(), mlp_ratio=4.0, downsample=True, fusion_layer=PWAM, gate_layer=language_gate):
        super().__init__()
        self.window_size = window_size
        self.shift_size = window_size // 2
        drop_path = list(drop_path) or [0.0] * depth
        self.blocks = nn.ModuleList([
            SwinBlock(dim, num_heads, window_size, shift_size=0 if j % 2 == 0 else self.shift_size,
                      mlp_ratio=mlp_ratio, drop_path=drop_path[j])
            for j in range(depth)
        ])
        self.fusion = fusion_layer(dim, text_dim, num_heads=fusion_heads, dropout=fusion_drop)
        self.res_gate = gate_layer(dim)
        self.downsample = PatchMerging(dim) if downsample else None
        self.grad_checkpointing = False

    def _run(self, module, *inputs):
        if self.grad_checkpointing and torch.is_grad_enabled():
            return checkpoint(module, *inputs, use_reentrant=False)
        return module(*inputs)

    def run_blocks(self, x, height, width):
        """The stage's Swin blocks alone: (B, H*W, C) -> (B, H*W, C)."""
        w = self.window_size
        padded_height, padded_width = -(-height // w) * w, -(-width // w) * w
        shift_mask = None
        if self.shift_size and len(self.blocks) > 1:
            shift_mask = shifted_window_mask(padded_height, padded_width, w, self.shift_size, x.device, x.dtype)
        for block in self.blocks:
            x = self._run(block, x, height, width, shift_mask)
        return x

    def forward(self, x, height, width, l_feats, l_mask):
        """-> (fused F_i (B, H*W, C), input of the next stage (None for the last), its height, its width)."""
        x = self.run_blocks(x, height, width)
        fused = self._run(self.fusion, x, l_feats, l_mask)
        if self.downsample is None:
            # The gated sum only feeds the next stage, so the last stage's `res_gate` is unused
            # (kept for checkpoint compatibility; DDP needs find_unused_parameters=True).
            return fused, None, height, width
        return fused, self._run(self._gate_and_merge, x, fused, height, width), (height + 1) // 2, (width + 1) // 2

    def _gate_and_merge(self, x, fused, height, width):
        return self.downsample(x + self.res_gate(fused) * fused, height, width)


class MultiModalSwinTransformer(nn.Module):
    """LAVT backbone: returns `[norm_i(F_i)]` as maps (B, C * 2**i, H_i, W_i), one per stage.

    `fusion_layer`: a name registered in the lib/fusion package or a callable; `gate_layer`: a callable.
    """

    def __init__(self, embed_dim, depths, num_heads, window_size=7, text_dim=768, fusion_heads=(1, 1, 1, 1),
                 fusion_drop=0.0, drop_path_rate=RELEASED_DROP_PATH_RATE, mlp_ratio=4.0, patch_size=4, in_chans=3,
                 fusion_layer="pwam", gate_layer=language_gate):
        super().__init__()
        depths, num_heads, fusion_heads = list(depths), list(num_heads), list(fusion_heads)
        if not len(depths) == len(num_heads) == len(fusion_heads):
            raise ValueError(f"MultiModalSwinTransformer: depths={depths}, num_heads={num_heads} and "
                             f"fusion_heads={fusion_heads} must have one entry per stage")
        self.num_stages = len(depths)
        self.text_dim = text_dim
        self.in_chans = in_chans
        self.num_features = [embed_dim * 2 ** i for i in range(self.num_stages)]
        self.patch_embed = PatchEmbed(patch_size, in_chans, embed_dim)
        fusion_layer = get_fusion(fusion_layer)
        rates = torch.linspace(0, drop_path_rate, sum(depths), device="cpu").tolist()
        self.layers = nn.ModuleList()
        for i, depth in enumerate(depths):
            start = sum(depths[:i])
            self.layers.append(MultiModalStage(
                self.num_features[i], depth, num_heads[i], window_size, text_dim, fusion_heads[i], fusion_drop,
                rates[start:start + depth], mlp_ratio, downsample=i < self.num_stages - 1,
                fusion_layer=fusion_layer, gate_layer=gate_layer))
        for i, channels in enumerate(self.num_features):
            self.add_module(f"norm{i}", nn.LayerNorm(channels))
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(module):
        if isinstance(module, nn.Linear):
            trunc_normal_(module.weight, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.LayerNorm):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)

    def set_grad_checkpointing(self, enable=True):
        """Recompute the Swin blocks and fusion layers in the backward pass (less memory, more time)."""
        for stage in self.layers:
            stage.grad_checkpointing = enable

    @staticmethod
    def is_fusion_parameter(name):
        """True for the parameters that fuse language in (fusion modules, gates), which Swin
        classification pretraining does not provide, by `named_parameters()` / state-dict name."""
        return ".fusion." in name or ".res_gate." in name

    def no_weight_decay_parameters(self):
        """Names of parameters that the released recipe trains without weight decay."""
        return [name for name, _ in self.named_parameters() if any(k in name for k in NO_WEIGHT_DECAY_KEYWORDS)]

    def visual_features(self, image):
        """The plain Swin, without fusion or gates (how its weights are pretrained, e.g. by
        tools/pretrain_backbone.py): image (B, 3, H, W) -> list of `norm_i` maps (B, C_i, H_i, W_i)."""
        x, height, width = self.patch_embed(image)
        outputs = []
        for i, stage in enumerate(self.layers):
            x = stage.run_blocks(x, height, width)
            outputs.append(getattr(self, f"norm{i}")(x).view(-1, height, width, self.num_features[i]).permute(0, 3, 1, 2))
            if stage.downsample is not None:
                x = stage.downsample(x, height, width)
                height, width = (height + 1) // 2, (width + 1) // 2
        return outputs

    def forward(self, image, l_feats, l_mask):
        """image (B, 3, H, W), l_feats (B, C_t, N_l), l_mask (B, N_l, 1) -> list of (B, C_i, H_i, W_i)."""
        if image.dim() != 4 or image.shape[1] != self.in_chans:
            raise ValueError(f"MultiModalSwinTransformer: image must be (B, {self.in_chans}, H, W), "
                             f"got {tuple(image.shape)}")
        if l_feats.dim() != 3 or l_feats.shape[1] != self.text_dim:
            raise ValueError(f"MultiModalSwinTransformer: l_feats must be (B, {self.text_dim}, N_l) (text "
                             f"features transposed), got {tuple(l_feats.shape)}")
        if l_mask.shape != (l_feats.shape[0], l_feats.shape[2], 1):
            raise ValueError(f"MultiModalSwinTransformer: l_mask must be (B, N_l, 1) = "
                             f"{(l_feats.shape[0], l_feats.shape[2], 1)}, got {tuple(l_mask.shape)}; "
                             "pass attention_mask.unsqueeze(-1)")
        x, height, width = self.patch_embed(image)
        outputs = []
        for i, stage in enumerate(self.layers):
            fused, next_x, next_height, next_width = stage(x, height, width, l_feats, l_mask)
            fused = getattr(self, f"norm{i}")(fused)
            maps = fused.view(-1, height, width, self.num_features[i]).permute(0, 3, 1, 2)
            # In reduced precision the maps stay channels-last, the layout the decoder's convolutions
            # run fastest in on CPU; fp32 keeps the contiguous layout of the reference outputs.
            outputs.append(maps if maps.dtype in (torch.bfloat16, torch.float16) else maps.contiguous())
            x, height, width = next_x, next_height, next_width
        return outputs
