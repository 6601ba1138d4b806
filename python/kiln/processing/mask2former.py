"""Mask2Former's answers from its two outputs, as transformers' Mask2FormerImageProcessor makes them.

    semantic = post_process_semantic_segmentation(class_logits, mask_logits, [(h, w), ...])
    instance = post_process_instance_segmentation(class_logits, mask_logits, threshold, target_sizes=...)
    panoptic = post_process_panoptic_segmentation(class_logits, mask_logits, threshold, mask_threshold,
                                                  overlap_mask_area_threshold, label_ids_to_fuse, target_sizes)

Each takes class_queries_logits (B, Q, L + 1) and masks_queries_logits (B, Q, h, w) (numpy or torch)
and computes with torch, in transformers' order of operations, so that the same outputs give the
same floats and ids: the masks are first resized bilinearly to 384 x 384 (transformers' hard-coded
"preprocessed size" of every Mask2Former checkpoint), then
- semantic: softmax over the classes without "no object", times sigmoid of the masks, summed over
  queries, resized to the target size, argmax;
- instance: the Q best (query, class) pairs by class probability (topk, unsorted, as transformers
  calls it), each scored by its class probability times the mean sigmoid inside its mask (logit > 0);
  kept at score >= threshold with a non-empty mask, painted in order (nearest resize to the target);
- panoptic: each query's best class (the "no object" class included), kept where it is a real
  class with probability > threshold; each pixel goes to the query with the largest score-weighted
  mask probability; a query's segment is kept where it owns pixels and owns more than
  overlap_mask_area_threshold of its own mask (probability >= mask_threshold); labels in
  label_ids_to_fuse share one segment id.
Segment maps are int32 (H, W): segment ids, -1 where no segment is.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from ..errors import InputValueError

PREPROCESSED_SIZE = (384, 384)  # transformers resizes every Mask2Former mask to this first
SUBTASKS = ("panoptic", "instance", "semantic")


def _tensors(class_logits: Any, mask_logits: Any):
    import torch

    c = torch.as_tensor(np.asarray(class_logits, dtype=np.float32))
    m = torch.as_tensor(np.asarray(mask_logits, dtype=np.float32))
    if c.ndim != 3 or m.ndim != 4 or c.shape[:2] != m.shape[:2]:
        raise InputValueError(
            f"class logits {list(c.shape)} and mask logits {list(m.shape)}: expected (batch, queries, labels + 1) "
            "and (batch, queries, height, width)"
        )
    return c, m


def _sizes(target_sizes: Sequence[tuple[int, int]] | None, batch: int) -> list[tuple[int, int]] | None:
    if target_sizes is None:
        return None
    if len(target_sizes) != batch:
        raise InputValueError(f"{len(target_sizes)} target sizes for {batch} images: expected one per image")
    return [(int(h), int(w)) for h, w in target_sizes]


def _to_384(mask_logits):
    import torch.nn.functional as F

    return F.interpolate(mask_logits, size=PREPROCESSED_SIZE, mode="bilinear", align_corners=False)


def semantic_scores(class_logits: Any, mask_logits: Any, target_sizes=None) -> list[np.ndarray]:
    """Per image the class scores (L, H, W) whose argmax is the semantic map."""
    import torch
    import torch.nn.functional as F

    c, m = _tensors(class_logits, mask_logits)
    sizes = _sizes(target_sizes, c.shape[0])
    with torch.inference_mode():
        probs = _to_384(m).sigmoid()
        seg = torch.einsum("bqc, bqhw -> bchw", c.softmax(dim=-1)[..., :-1], probs)
        if sizes is None:
            return [s.numpy() for s in seg]
        return [
            F.interpolate(seg[i][None], size=sizes[i], mode="bilinear", align_corners=False)[0].numpy()
            for i in range(len(sizes))
        ]


def post_process_semantic_segmentation(class_logits: Any, mask_logits: Any, target_sizes=None) -> list[np.ndarray]:
    """Per image an int64 (H, W) map of label ids (torch's argmax: the first label wins a tie)."""
    import torch

    return [
        torch.from_numpy(s).argmax(0).numpy().astype(np.int64)
        for s in semantic_scores(class_logits, mask_logits, target_sizes)
    ]


def post_process_instance_segmentation(
    class_logits: Any, mask_logits: Any, threshold: float = 0.5, target_sizes=None
) -> list[dict]:
    """Per image {"segmentation": int32 (H, W) segment ids or -1, "segments_info": [{"id",
    "label_id", "was_fused", "score"}]} (transformers' mask_threshold and overlap_mask_area_threshold
    are not read by its instance post-processing: neither is here)."""
    import torch
    import torch.nn.functional as F

    c, m = _tensors(class_logits, mask_logits)
    sizes = _sizes(target_sizes, c.shape[0])
    results = []
    with torch.inference_mode():
        masks = _to_384(m)
        num_classes, num_queries = c.shape[-1] - 1, c.shape[-2]
        for i in range(c.shape[0]):
            scores = F.softmax(c[i], dim=-1)[:, :-1]
            labels = torch.arange(num_classes).unsqueeze(0).repeat(num_queries, 1).flatten(0, 1)
            top_scores, top = scores.flatten(0, 1).topk(num_queries, sorted=False)
            top_labels = labels[top]
            query = torch.div(top, num_classes, rounding_mode="floor")
            pred = masks[i][query]
            binary = (pred > 0).float()
            mask_scores = (pred.sigmoid().flatten(1) * binary.flatten(1)).sum(1) / (binary.flatten(1).sum(1) + 1e-6)
            final = top_scores * mask_scores
            segmentation = torch.zeros(PREPROCESSED_SIZE) - 1
            if sizes is not None:
                segmentation = torch.zeros(sizes[i]) - 1
                binary = F.interpolate(binary.unsqueeze(0), size=sizes[i], mode="nearest")[0]
            segments = []
            current = 0
            for j in range(num_queries):
                score = final[j].item()
                if not torch.all(binary[j] == 0) and score >= threshold:
                    segmentation[binary[j] == 1] = current
                    segments.append(
                        {
                            "id": current,
                            "label_id": int(top_labels[j].item()),
                            "was_fused": False,
                            "score": round(score, 6),
                        }
                    )
                    current += 1
            results.append({"segmentation": segmentation.numpy().astype(np.int32), "segments_info": segments})
    return results


def post_process_panoptic_segmentation(
    class_logits: Any,
    mask_logits: Any,
    threshold: float = 0.5,
    mask_threshold: float = 0.5,
    overlap_mask_area_threshold: float = 0.8,
    label_ids_to_fuse: Iterable[int] | None = None,
    target_sizes=None,
) -> list[dict]:
    """Per image {"segmentation": int32 (H, W) segment ids (from 1) or -1 where no query was kept
    at all (0 where kept queries own no pixel), "segments_info": [{"id", "label_id", "was_fused", "score"}]}."""
    import torch
    import torch.nn.functional as F

    fuse = set(label_ids_to_fuse or ())
    c, m = _tensors(class_logits, mask_logits)
    sizes = _sizes(target_sizes, c.shape[0])
    num_labels = c.shape[-1] - 1
    results = []
    with torch.inference_mode():
        probs_all = _to_384(m).sigmoid()
        pred_scores, pred_labels = F.softmax(c, dim=-1).max(-1)
        for i in range(c.shape[0]):
            keep = pred_labels[i].ne(num_labels) & (pred_scores[i] > threshold)
            probs, scores, labels = probs_all[i][keep], pred_scores[i][keep], pred_labels[i][keep]
            if probs.shape[0] <= 0:
                h, w = sizes[i] if sizes is not None else probs.shape[1:]
                results.append({"segmentation": np.full((h, w), -1, np.int32), "segments_info": []})
                continue
            h, w = sizes[i] if sizes is not None else probs.shape[1:]
            segmentation = torch.zeros((h, w), dtype=torch.int32)
            if sizes is not None:
                probs = F.interpolate(probs.unsqueeze(0), size=sizes[i], mode="bilinear", align_corners=False)[0]
            probs = probs * scores.view(-1, 1, 1)
            owner = probs.argmax(0)
            segments: list[dict] = []
            memory: dict[int, int] = {}
            current = 0
            for k in range(labels.shape[0]):
                label = int(labels[k].item())
                fused = label in fuse
                mask_k = owner == k
                area = mask_k.sum()
                original = (probs[k] >= mask_threshold).sum()
                exists = bool(area > 0 and original > 0)
                if exists and not (area / original).item() > overlap_mask_area_threshold:
                    exists = False
                if not exists:
                    continue
                if label in memory:
                    current = memory[label]
                else:
                    current += 1
                segmentation[mask_k] = current
                segments.append(
                    {"id": current, "label_id": label, "was_fused": fused, "score": round(scores[k].item(), 6)}
                )
                if fused:
                    memory[label] = current
            results.append({"segmentation": segmentation.numpy(), "segments_info": segments})
    return results


def segment_list(result: dict, labels: Sequence[str]) -> list[dict]:
    """An instance / panoptic result as the answer lists it: [{"id", "label", "label_id", "score",
    "pixels", "share"}] per segment, in the segments' order."""
    seg = result["segmentation"]
    total = max(int(seg.size), 1)
    out = []
    for s in result["segments_info"]:
        pixels = int((seg == s["id"]).sum())
        out.append(
            {
                "id": s["id"],
                "label": labels[s["label_id"]],
                "label_id": s["label_id"],
                "score": s["score"],
                "was_fused": s["was_fused"],
                "pixels": pixels,
                "share": pixels / total,
            }
        )
    return out


def draw_segments(image, segmentation: np.ndarray, segments: list[dict], alpha: float = 0.5, max_legend: int = 12):
    """The photo with each segment tinted in its own colour, its outline drawn, and a legend of
    the segments (label, score, share), largest first."""
    from PIL import Image, ImageDraw

    from .segmentation import _font, label_colours

    photo = np.asarray(image.convert("RGB"), dtype=np.float32)
    if photo.shape[:2] != segmentation.shape:
        raise InputValueError(
            f"a {photo.shape[1]}x{photo.shape[0]} photo and a {segmentation.shape[1]}x"
            f"{segmentation.shape[0]} segment map: expected the same size"
        )
    colours = label_colours(max(len(segments), 1) + 1)
    out = photo.copy()
    edges = np.zeros(segmentation.shape, bool)
    for k, s in enumerate(segments):
        mask = segmentation == s["id"]
        out[mask] = out[mask] * (1 - alpha) + colours[k].astype(np.float32) * alpha
        inner = mask.copy()
        inner[1:, :] &= mask[:-1, :]
        inner[:-1, :] &= mask[1:, :]
        inner[:, 1:] &= mask[:, :-1]
        inner[:, :-1] &= mask[:, 1:]
        edges |= mask & ~inner
    out[edges] = 255.0
    picture = Image.fromarray(out.round().clip(0, 255).astype(np.uint8))
    order = sorted(range(len(segments)), key=lambda k: -segments[k]["pixels"])
    shown, rest = order[:max_legend], len(order) - max_legend
    if not shown:
        return picture
    size = max(10, min(16, picture.height // 30))
    font, pad, swatch = _font(size), 4, size
    rows = [
        f"{segments[k]['label']} {segments[k]['score']:.2f} {100 * segments[k]['share']:.1f}%"
        if segments[k].get("score") is not None
        else f"{segments[k]['label']} {100 * segments[k]['share']:.1f}%"
        for k in shown
    ] + ([f"+{rest} more"] if rest > 0 else [])
    overlay = Image.new("RGBA", picture.size, (0, 0, 0, 0))
    draw = ImageDraw.Draw(overlay)
    width = max(draw.textlength(r, font=font) for r in rows) + swatch + 3 * pad
    draw.rectangle([0, 0, width, len(rows) * (size + pad) + pad], fill=(0, 0, 0, 160))
    for row, text in enumerate(rows):
        y = pad + row * (size + pad)
        if row < len(shown):
            draw.rectangle([pad, y, pad + swatch, y + swatch], fill=tuple(int(v) for v in colours[shown[row]]))
        draw.text((2 * pad + swatch, y), text, fill=(255, 255, 255, 255), font=font)
    return Image.alpha_composite(picture.convert("RGBA"), overlay).convert("RGB")
