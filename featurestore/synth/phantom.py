"""A procedural frontal chest radiograph (PA view) with exact masks.

Why a phantom: no public cohort is reachable from these machines, and the study's tasks need
images whose labels are *learnable but not trivial*. Every structure a reader looks at on a
chest film is drawn: soft-tissue outline, two lung fields with branching vascular markings that
fade towards the periphery, heart silhouette, mediastinum with trachea and aortic knob, spine,
diaphragm domes with costophrenic recesses, posterior ribs and clavicles, a smooth exposure
gradient and quantum-like noise. Conventions are the radiographic ones: image left is the
patient's right, bright = attenuating (MONOCHROME2), the heart sits two thirds to the patient's
left (image right).

Labels come from the masks, never from the sampling parameters: the cardiothoracic ratio is
measured as (heart mask width) / (width across the outer lung borders), and a pneumothorax is a
peripheral crescent of a lung without markings, bounded by a thin visceral pleural line. Its
depth is drawn log-uniformly, so small apical ones are faint slivers (hard), large ones obvious.

``lesion_contrast`` (1 = as described) scales how visible the findings are without changing
the anatomy, the masks, the labels or a single random draw: the heart's density above what
surrounds it (whose width is cardiomegaly), and a pneumothorax's lucency, its pleural line and
the markings it removes. 0 leaves no trace of them in the pixels. A synthetic cohort uses it to
plant a subgroup whose findings are harder to see (``SynthConfig.subgroup_effect``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from PIL import Image, ImageDraw
from scipy import ndimage

__all__ = ["PatientAnatomy", "Phantom", "sample_patient", "render"]


@dataclass(frozen=True)
class PatientAnatomy:
    """Per-patient geometry (fractions of the image width/height); shared by a patient's films."""

    centre_x: float
    thorax_half_width: float
    apex_y: float
    diaphragm_y: float
    target_ctr: float
    heart_height: float
    heart_tilt_deg: float
    mediastinum_half_width: float
    rib_spacing: float


@dataclass
class Phantom:
    """One rendered film: intensity in [0, 1] (MONOCHROME2 sense) and its boolean masks."""

    image: np.ndarray
    lung_mask: np.ndarray
    heart_mask: np.ndarray
    pneumothorax_mask: np.ndarray
    ctr: float
    pneumothorax: bool
    pneumothorax_side: str | None = None
    pneumothorax_depth: float = 0.0
    extras: dict = field(default_factory=dict)


def sample_patient(rng: np.random.Generator) -> PatientAnatomy:
    """Draw one patient's anatomy; CTR ~ N(0.47, 0.06) puts ~30% above the 0.5 threshold."""
    return PatientAnatomy(
        centre_x=0.5 + rng.normal(0.0, 0.012),
        thorax_half_width=rng.uniform(0.31, 0.37),
        apex_y=rng.uniform(0.09, 0.15),
        diaphragm_y=rng.uniform(0.64, 0.73),
        target_ctr=float(np.clip(rng.normal(0.47, 0.06), 0.33, 0.68)),
        heart_height=rng.uniform(0.20, 0.25),
        heart_tilt_deg=rng.uniform(-22.0, -8.0),
        mediastinum_half_width=rng.uniform(0.05, 0.065),
        rib_spacing=rng.uniform(0.052, 0.062),
    )


def _ellipse(xx, yy, cx, cy, ax, ay, angle_deg=0.0):
    t = np.deg2rad(angle_deg)
    dx, dy = xx - cx, yy - cy
    u = dx * np.cos(t) + dy * np.sin(t)
    v = -dx * np.sin(t) + dy * np.cos(t)
    return (u / ax) ** 2 + (v / ay) ** 2 <= 1.0


def _vessel_tree(draw: ImageDraw.ImageDraw, rng, x, y, angle, length, width, depth):
    """Recursive branching markings: thinner and shorter at each generation."""
    if depth == 0 or length < 2 or width < 0.6:
        return
    n_steps = 4
    pts = [(x, y)]
    a = angle
    for _ in range(n_steps):
        a += rng.normal(0.0, 0.12)
        x += np.cos(a) * length / n_steps
        y += np.sin(a) * length / n_steps
        pts.append((x, y))
    draw.line(pts, fill=int(min(255, 70 + 40 * width)), width=max(1, int(round(width))))
    for da in (rng.uniform(0.25, 0.6), -rng.uniform(0.25, 0.6)):
        _vessel_tree(draw, rng, x, y, a + da, length * rng.uniform(0.62, 0.8), width * 0.72, depth - 1)


def render(
    anatomy: PatientAnatomy,
    rng: np.random.Generator,
    height: int,
    width: int,
    pneumothorax: bool,
    lesion_contrast: float = 1.0,
) -> Phantom:
    """Render one film of ``anatomy`` at ``height`` x ``width`` pixels; ``lesion_contrast`` in
    [0, 1] fades the findings (module docstring)."""
    if not 0.0 <= lesion_contrast <= 1.0:
        raise ValueError(f"lesion_contrast must be in [0, 1], got {lesion_contrast}")
    c = float(lesion_contrast)
    H, W = height, width
    ys = (np.arange(H, dtype=np.float32) + 0.5) / H
    xs = (np.arange(W, dtype=np.float32) + 0.5) / W
    xx, yy = np.meshgrid(xs, ys)
    px = W  # widths in fractions of W are converted with px

    a = anatomy
    # Small per-film jitter: positioning and inspiration differ between a patient's films.
    cx = a.centre_x + rng.normal(0, 0.006)
    tw = a.thorax_half_width * rng.uniform(0.97, 1.03)
    apex = a.apex_y + rng.normal(0, 0.006)
    dia = a.diaphragm_y + rng.normal(0, 0.01)
    med = a.mediastinum_half_width

    # --- lungs and diaphragm --------------------------------------------------------------
    t = np.clip((yy - apex) / (dia - apex), 0.0, None)
    shape = np.sqrt(np.sin(np.pi / 2 * np.clip(t / 0.8, 0, 1)))
    lateral = med + (tw - med) * shape  # half distance from the midline to the outer border
    dist_mid = np.abs(xx - cx)
    side_right_img = xx > cx  # image right = patient's left
    dome_h = rng.uniform(0.04, 0.07)
    diaphragm = np.empty((H, W), np.float32)  # y of the diaphragm surface under each column
    for s, lift in ((-1, rng.uniform(0.01, 0.035)), (1, 0.0)):  # patient's right dome is higher
        lc = cx + s * (med + tw) / 2
        half = (tw - med) / 2 + 0.03
        dome = (dia - lift) - dome_h * np.clip(1 - ((xx - lc) / half) ** 2, 0, 1)
        in_side = side_right_img if s == 1 else ~side_right_img
        diaphragm = np.where(in_side, dome, diaphragm)
    lungs = (dist_mid > med) & (dist_mid < lateral) & (yy > apex) & (yy < diaphragm)
    lung_outer = lungs.copy()

    # --- heart: a left-ventricular ellipse and a right-atrial bulge, resting on the left dome ---
    thoracic_w = 2 * tw
    heart_w = a.target_ctr * thoracic_w
    hx = cx + 0.17 * heart_w
    hb = a.heart_height / 2
    hy = dia - 0.55 * hb + rng.normal(0, 0.005)
    heart = _ellipse(xx, yy, hx, hy, heart_w / 2 * 0.98, hb, a.heart_tilt_deg * 0.25)
    heart |= _ellipse(xx, yy, hx - 0.3 * heart_w, hy + 0.2 * hb, 0.22 * heart_w, 0.7 * hb)
    heart &= yy < diaphragm
    lungs &= ~heart

    # --- pneumothorax (before markings, which it removes) -------------------------------------
    ptx = np.zeros((H, W), bool)
    side = None
    depth = 0.0
    if pneumothorax:
        side = "right" if rng.random() < 0.5 else "left"  # patient's side
        on_img_left = side == "right"
        this_side = ~side_right_img if on_img_left else side_right_img
        side_lung = lungs & this_side
        # Distance to the lateral and apical pleura only: fill the mediastinum and the heart.
        medial_fill = (dist_mid <= med + 0.002) & (yy > apex - 0.02) & (yy < dia)
        outer = (lung_outer | medial_fill) & this_side
        dist = ndimage.distance_transform_edt(outer) / px
        depth = float(np.exp(rng.uniform(np.log(0.008), np.log(0.15))))
        extent = rng.uniform(0.45, 1.0)  # how far down the crescent reaches
        y_lim = apex + extent * (dia - apex)
        ptx = side_lung & (dist < depth) & (yy < y_lim)
        ptx = ndimage.binary_opening(ptx, iterations=1)
        if ptx.sum() < 20:  # too small to be a finding: redraw as a clear sliver
            ptx = side_lung & (dist < 0.012) & (yy < apex + 0.5 * (dia - apex))

    # --- composition: a soft-tissue thickness map, tone-mapped like film at the end ---------
    body_hw = tw + rng.uniform(0.07, 0.1)
    shoulders = np.clip((0.16 - yy) / 0.16, 0, 1) ** 1.5 * 0.14
    body_edge = body_hw - shoulders
    thickness = np.clip(1 - (dist_mid / body_edge) ** 2, 0, 1) ** 0.5
    raw = 0.42 * thickness + 0.02

    lung_soft = ndimage.gaussian_filter(lung_outer.astype(np.float32), 0.005 * px)
    aeration = 1 + 0.25 * ndimage.gaussian_filter(rng.normal(0, 1, (H // 8 + 1, W // 8 + 1)), 3)
    aeration = np.kron(aeration, np.ones((8, 8)))[:H, :W].astype(np.float32)
    raw = raw - 0.30 * lung_soft * thickness * aeration

    # Dense central structures (heart, mediastinum, abdomen) replace rather than add.
    medi_w = med * (0.75 + 0.45 * np.clip((yy - apex) * 2.5, 0, 1))
    medi = (dist_mid < medi_w) & (yy < diaphragm)
    abdomen = (yy > diaphragm) & (thickness > 0)
    knob = _ellipse(xx, yy, cx + med * 0.95, apex + 0.24 * (dia - apex), 0.032, 0.028)
    medi_d = 0.50 * ndimage.gaussian_filter(medi.astype(np.float32), 0.006 * px)
    heart_d = 0.56 * ndimage.gaussian_filter(heart.astype(np.float32), 0.003 * px)
    abdomen_d = 0.54 * ndimage.gaussian_filter(abdomen.astype(np.float32), 0.004 * px)
    knob_d = 0.50 * ndimage.gaussian_filter(knob.astype(np.float32), 0.004 * px)
    dense = np.maximum.reduce([medi_d, heart_d, abdomen_d, knob_d]) * (0.75 + 0.25 * thickness)
    if c == 1.0:
        raw = np.maximum(raw, dense)
    else:  # the heart's excess over the image without it, scaled
        without = np.maximum(raw, np.maximum.reduce([medi_d, abdomen_d, knob_d]) * (0.75 + 0.25 * thickness))
        raw = without + c * (np.maximum(raw, dense) - without)
    spine = np.clip(1 - (dist_mid / 0.03) ** 2, 0, 1)
    raw = raw + 0.06 * spine * (thickness > 0)
    carina = apex + 0.22 * (dia - apex)
    trachea = (np.abs(xx - cx + 0.004) < 0.013) & (yy < carina)
    raw = raw - 0.10 * ndimage.gaussian_filter(trachea.astype(np.float32), 0.003 * px)

    # Ribs and clavicles, drawn as polylines on a canvas.
    bone = Image.new("L", (W, H), 0)
    d = ImageDraw.Draw(bone)
    n_ribs = 10
    rib_w = max(2, int(0.018 * H))
    for s in (-1, 1):
        for i in range(n_ribs):
            y0 = apex - 0.03 + i * a.rib_spacing
            pts = []
            for u in np.linspace(0, 1, 24):
                x = cx + s * (0.03 + u * (tw + 0.03))
                y = y0 - 0.03 * np.sin(np.pi * u * 0.9) + 0.09 * u**2
                pts.append((x * W, y * H))
            d.line(pts, fill=120, width=rib_w)
            d.line(pts, fill=60, width=max(1, rib_w // 2))  # denser cortex at the rib edges
        # Clavicle: from the sternal notch out and up to the shoulder.
        cl = [(cx + s * 0.02, apex + 0.02), (cx + s * 0.16, apex - 0.01), (cx + s * (tw + 0.06), apex - 0.05)]
        d.line([(x * W, y * H) for x, y in cl], fill=170, width=max(3, int(0.022 * H)))
    bone_arr = ndimage.gaussian_filter(np.asarray(bone, np.float32) / 255.0, 0.0015 * px)
    raw = raw + 0.16 * bone_arr * (thickness > 0) * (0.5 + 0.5 * lung_soft)

    # Vascular markings from each hilum, faded towards the periphery; absent in a pneumothorax.
    vessels = Image.new("L", (W, H), 0)
    dv = ImageDraw.Draw(vessels)
    hilum_y = apex + 0.38 * (dia - apex)
    for s in (-1, 1):
        hx_ = (cx + s * (med + 0.03)) * W
        for base in np.linspace(-0.9, 0.9, 5):
            ang = (np.pi if s < 0 else 0.0) + base * 1.1
            _vessel_tree(dv, rng, hx_, hilum_y * H, ang, 0.09 * H, 0.008 * H, 6)
    vess = ndimage.gaussian_filter(np.asarray(vessels, np.float32) / 255.0, 0.0012 * px)
    fade = np.clip(1.15 - np.abs(xx - cx) / (tw + 1e-6), 0.15, 1.0)
    markings = vess * fade * lungs
    if ptx.any():
        markings = markings * ~ptx if c == 1.0 else markings * (1.0 - c * ptx)
    raw = raw + 0.11 * markings

    if ptx.any():
        edge_strength = rng.uniform(0.05, 0.12)
        collapsed = lungs & ~ptx
        pleura = ndimage.binary_dilation(ptx, iterations=max(1, int(0.0015 * px))) & collapsed
        pleura_soft = ndimage.gaussian_filter(pleura.astype(np.float32), 0.0008 * px)
        raw = raw - c * rng.uniform(0.06, 0.14) * ptx + c * edge_strength * pleura_soft

    # Exposure gradient, film-like tone curve, blur (detector MTF) and noise.
    gx, gy = rng.uniform(-0.18, 0.18, size=2)
    raw = raw * (1 + gx * (xx - 0.5) + gy * (yy - 0.5))
    k = rng.uniform(1.8, 2.6)
    img = (1 - np.exp(-k * np.clip(raw, 0, None))) / (1 - np.exp(-k * 0.8))
    img = ndimage.gaussian_filter(img.astype(np.float32), 0.0008 * px)
    noise = rng.normal(0, rng.uniform(0.006, 0.018), size=(H, W)).astype(np.float32)
    noise += ndimage.gaussian_filter(rng.normal(0, 0.05, size=(H, W)).astype(np.float32), 0.004 * px)
    img = img + noise
    gamma = rng.uniform(0.85, 1.15)
    img = np.clip(img, 0, 1) ** gamma

    ctr = measure_ctr(heart, lung_outer)
    return Phantom(
        image=img.astype(np.float32),
        lung_mask=lungs,
        heart_mask=heart,
        pneumothorax_mask=ptx,
        ctr=ctr,
        pneumothorax=bool(ptx.any()),
        pneumothorax_side=side,
        pneumothorax_depth=depth,
    )


def measure_ctr(heart_mask: np.ndarray, lung_mask: np.ndarray) -> float:
    """Cardiothoracic ratio from masks: widest heart extent / extent across the outer lung borders."""
    hc = np.flatnonzero(heart_mask.any(axis=0))
    lc = np.flatnonzero(lung_mask.any(axis=0))
    if hc.size == 0 or lc.size == 0:
        raise ValueError("cannot measure CTR: empty heart or lung mask")
    return float((hc[-1] - hc[0] + 1) / (lc[-1] - lc[0] + 1))
