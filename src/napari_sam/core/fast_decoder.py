"""A faster forward pass for segment-anything's ``MaskDecoder``, same weights.

:func:`decode` returns what ``MaskDecoder.forward`` returns (low-res mask
logits and predicted IoU) from the module's own parameters, up to float
rounding (~1e-6 relative). On the CPU a ViT-B click spends almost all its
time here, and most of that in a few badly shaped operations:

* the two 2x2, stride-2 transposed convolutions of ``output_upscaling`` are
  per-pixel linear maps, so they run as plain matrix products; the upscaled
  embedding stays in a "blocked" pixel order ((i, j, a, b) for pixel
  (2i + a, 2j + b)) so nothing is shuffled until the final 256 x 256 logits;
* ``LayerNorm2d`` becomes ``F.layer_norm`` over the channel (last) axis;
* the cross-attentions between the few prompt tokens and the 4096 pixels
  fold the pixels' projections into the tokens' side (see
  :func:`_tokens_to_image`, :func:`_image_to_tokens`): the same products,
  associated differently, at about a third of the arithmetic; ``keys +
  key_pe`` is computed once per layer instead of twice;
* only the requested mask tokens are turned into masks.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["decode", "dense_pe"]


def _heads(x, n):
    b, t, c = x.shape
    return x.view(b, t, n, c // n).transpose(1, 2)


def _attention(attn, q, k, v):
    """segment-anything ``Attention.forward`` with SDPA (the tokens' self-attention)."""
    n = attn.num_heads
    out = F.scaled_dot_product_attention(_heads(attn.q_proj(q), n), _heads(attn.k_proj(k), n),
                                         _heads(attn.v_proj(v), n))
    b, _, t, c = out.shape
    return attn.out_proj(out.transpose(1, 2).reshape(b, t, n * c))


def _per_head(w, n):
    """(I, C) projection weight -> (n, I/n, C), one block of rows per head."""
    return w.view(n, w.shape[0] // n, w.shape[1])


def _tokens_to_image(attn, q, k, v):
    """``Attention.forward`` for a few queries (tokens) over many keys (image pixels).

    The key and value projections of the 4096 pixels are folded into the
    queries' side: logits = (Q_h Wk_h) k^T (the key bias adds a constant per
    query row, which softmax ignores), and A (v Wv^T + bv) = (A v) Wv^T + bv
    (softmax rows sum to 1). Two thin products replace two 4096-row projections.
    """
    n = attn.num_heads
    B, t, C = q.shape
    Q = _heads(attn.q_proj(q), n)  # (B, n, t, d)
    d = Q.shape[-1]
    qk = torch.matmul(Q, _per_head(attn.k_proj.weight, n))  # (B, n, t, C)
    logits = torch.matmul(qk.reshape(B, n * t, C), k.transpose(1, 2)) * (d ** -0.5)  # (B, n*t, HW)
    a = torch.softmax(logits, dim=-1)
    av = torch.matmul(a, v).view(B, n, t, C)  # (B, n, t, C)
    out = torch.matmul(av, _per_head(attn.v_proj.weight, n).transpose(1, 2))  # (B, n, t, d)
    out = out + attn.v_proj.bias.view(n, 1, d)
    return attn.out_proj(out.transpose(1, 2).reshape(B, t, n * d))


def _image_to_tokens(attn, q, k, v):
    """``Attention.forward`` for many queries (image pixels) over a few keys (tokens).

    The query and output projections of the 4096 pixels are folded into the
    tokens' side: logits = q (Wq_h^T K_h^T) + bq_h K_h^T and
    out = sum_h A_h (V_h Wo_h^T) + bo: two thin products over the pixels
    instead of two 4096-row projections and an attention call.
    """
    n = attn.num_heads
    B, t, _ = k.shape
    K = _heads(attn.k_proj(k), n)  # (B, n, t, d)
    V = _heads(attn.v_proj(v), n)
    d = K.shape[-1]
    wq = _per_head(attn.q_proj.weight, n)  # (n, d, C)
    m1 = torch.matmul(wq.transpose(1, 2), K.transpose(2, 3))  # (B, n, C, t)
    b1 = torch.matmul(K, attn.q_proj.bias.view(n, d, 1)).view(B, 1, n * t)  # (B, 1, n*t)
    C = m1.shape[2]
    m1 = m1.permute(0, 2, 1, 3).reshape(B, C, n * t)
    logits = torch.baddbmm(b1, q, m1) * (d ** -0.5)  # (B, HW, n*t)
    a = torch.softmax(logits.view(B, -1, n, t), dim=-1).view(B, -1, n * t)
    wo = attn.out_proj.weight.view(C, n, d).permute(1, 2, 0)  # (n, d, C)
    m2 = torch.matmul(V, wo).reshape(B, n * t, C)  # (B, n*t, C)
    return torch.baddbmm(attn.out_proj.bias.view(1, 1, C), a, m2)


def _two_way(tr, keys, key_pe, point_embedding):
    """``TwoWayTransformer.forward`` on token-layout keys (B, HW, C)."""
    queries = point_embedding
    for layer in tr.layers:
        if layer.skip_first_layer_pe:
            queries = _attention(layer.self_attn, queries, queries, queries)
        else:
            q = queries + point_embedding
            queries = queries + _attention(layer.self_attn, q, q, queries)
        queries = layer.norm1(queries)
        k = keys + key_pe
        q = queries + point_embedding
        queries = layer.norm2(queries + _tokens_to_image(layer.cross_attn_token_to_image, q, k, keys))
        queries = layer.norm3(queries + layer.mlp(queries))
        q = queries + point_embedding
        keys = layer.norm4(keys + _image_to_tokens(layer.cross_attn_image_to_token, k, q, queries))
    q = queries + point_embedding
    queries = queries + _tokens_to_image(tr.final_attn_token_to_image, q, keys + key_pe, keys)
    return tr.norm_final_attn(queries), keys


def _deconv2x2(x, conv):
    """ConvTranspose2d(kernel 2, stride 2) on channel-last pixels (..., Cin) -> (..., 2, 2, Cout)."""
    cin, cout = conv.weight.shape[:2]
    w = conv.weight.permute(2, 3, 1, 0).reshape(4 * cout, cin)  # rows (a, b, o)
    bias = None if conv.bias is None else conv.bias.repeat(4)
    return F.linear(x, w, bias).unflatten(-1, (2, 2, cout))


def _is_standard_upscaling(up) -> bool:
    from segment_anything.modeling.common import LayerNorm2d

    if len(up) != 5:
        return False
    c1, ln, _, c2, _ = up
    convs_ok = all(isinstance(c, torch.nn.ConvTranspose2d) and c.kernel_size == (2, 2) and c.stride == (2, 2)
                   and c.padding == (0, 0) and c.output_padding == (0, 0) and c.groups == 1 and c.dilation == (1, 1)
                   for c in (c1, c2))
    return convs_ok and isinstance(ln, LayerNorm2d) and all(isinstance(up[i], torch.nn.GELU) for i in (2, 4))


def decode(md, image_embeddings, image_pe, sparse_prompt_embeddings, dense_prompt_embeddings,
           multimask_output: bool):
    """``md(image_embeddings=..., ...)`` for a segment-anything ``MaskDecoder``, faster.

    Shapes as in segment-anything: image_embeddings (1, C, h, w), image_pe
    (1, C, h, w), sparse (B, N, C), dense (B, C, h, w); or one embedding and
    positional code per object, (B, C, h, w) (``core.decode_window``). Returns
    (masks (B, k, 4h, 4w), iou (B, k)) with k = 3 (multimask) or 1.
    """
    up = md.output_upscaling
    if not _is_standard_upscaling(up):  # an unusual decoder: run it as it is (one call per embedding)
        if image_embeddings.shape[0] == 1:
            return md(image_embeddings=image_embeddings, image_pe=image_pe,
                      sparse_prompt_embeddings=sparse_prompt_embeddings,
                      dense_prompt_embeddings=dense_prompt_embeddings, multimask_output=multimask_output)
        outs = [md(image_embeddings=image_embeddings[j : j + 1], image_pe=image_pe[j : j + 1] if image_pe.shape[0] > 1
                   else image_pe, sparse_prompt_embeddings=sparse_prompt_embeddings[j : j + 1],
                   dense_prompt_embeddings=dense_prompt_embeddings[j : j + 1], multimask_output=multimask_output)
                for j in range(image_embeddings.shape[0])]
        return torch.cat([o[0] for o in outs]), torch.cat([o[1] for o in outs])
    with torch.inference_mode():
        B = sparse_prompt_embeddings.shape[0]
        out_tokens = torch.cat([md.iou_token.weight, md.mask_tokens.weight], 0).unsqueeze(0).expand(B, -1, -1)
        tokens = torch.cat((out_tokens, sparse_prompt_embeddings), 1)
        _, c, h, w = image_embeddings.shape
        # (B, h*w, C) token layout, as TwoWayTransformer flattens it
        src = (image_embeddings + dense_prompt_embeddings).flatten(2).transpose(1, 2).contiguous()
        if src.shape[0] != B:
            src = src.expand(B, -1, -1)
        pos = image_pe.flatten(2).transpose(1, 2).contiguous().expand(B, -1, -1)
        hs, keys = _two_way(md.transformer, src, pos, tokens)
        iou = md.iou_prediction_head(hs[:, 0, :])
        sel = slice(1, None) if multimask_output else slice(0, 1)
        idx = range(md.num_mask_tokens)[sel]
        hyper = torch.stack([md.output_hypernetworks_mlps[i](hs[:, 1 + i, :]) for i in idx], 1)  # (B, k, c2)
        c1, ln, act1, c2, act2 = up
        x = _deconv2x2(keys.view(B, h, w, c), c1)  # (B, h, w, 2, 2, c1)
        x = act1(F.layer_norm(x, (x.shape[-1],), ln.weight, ln.bias, ln.eps))
        x = act2(_deconv2x2(x, c2))  # (B, h, w, 2, 2, 2, 2, c2): pixel (4i + 2a + a2, 4j + 2b + b2)
        m = torch.matmul(x.reshape(B, -1, x.shape[-1]), hyper.transpose(1, 2))  # (B, h*w*16, k)
        k = hyper.shape[1]
        m = m.view(B, h, w, 2, 2, 2, 2, k).permute(0, 7, 1, 3, 5, 2, 4, 6).reshape(B, k, 4 * h, 4 * w)
        return m, iou[:, sel]


_PE: dict = {}


def dense_pe(prompt_encoder) -> torch.Tensor:
    """``prompt_encoder.get_dense_pe()``, remembered until the encoder's Gaussian matrix or grid changes."""
    g = prompt_encoder.pe_layer.positional_encoding_gaussian_matrix
    key = (id(prompt_encoder), tuple(prompt_encoder.image_embedding_size), g.data_ptr(), g._version, g.device)
    pe = _PE.get(key)
    if pe is None:
        with torch.inference_mode():
            pe = type(prompt_encoder).get_dense_pe(prompt_encoder)
        _PE.clear()  # one model at a time is the common case; keep memory bounded
        _PE[key] = pe
    return pe
