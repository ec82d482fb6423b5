"""Train the VideoForge demo model: a tiny Wan2.1 text-to-video set (VAE, UMT5 text encoder with
its own SentencePiece tokenizer, DiT) on the synthetic clips of `demo/data.py`, on CPU, and
save it in exactly the files ComfyUI users have (the "repackaged" single safetensors layouts):

    demo/weights/vae/videoforge_demo_wan_vae.safetensors                 (wan_2.1_vae layout, fp16)
    demo/weights/text_encoders/videoforge_demo_umt5.safetensors          (umt5_xxl_fp16 layout,
                                                                          `spiece_model` embedded)
    demo/weights/diffusion_models/videoforge_demo_wan_t2v.safetensors    (wan2.1_t2v_*_fp16 layout,
                                                                          `model.diffusion_model.`)

    E=$(bash .ci/env.sh); $E/bin/python demo/train.py            # all stages
    $E/bin/python demo/train.py --stage dit                      # reuse the saved VAE
    $E/bin/python demo/train.py --stage tokenizer                # only re-embed the tokenizer

Stages (`--stage all` runs them in this order, which is how the committed files were made):
1. VAE (`demo/train_vae.py`): the Wan2.1 VAE architecture at base width 16, trained with
   diffusers' AutoencoderKLWan: 900 steps (single frames, then 5-frame clips), then its latents
   are standardised (`standardise_latents`: an exact rewrite of its two 1x1x1 convs so the
   normalised latents are ~N(0, 1) on the clips), a 250-step fine-tune on 9-frame clips, and
   the standardisation again.
2. Data: `--clips` clips of 17 frames at 64x64 (a red / green / blue circle or square moving
   left / right / up / down over a plain or graded background, caption "a red circle moving
   right"), encoded ONCE with our own loader + VAE (`models/wan`), exactly as Encode Video would.
3. Tokenizer: a SentencePiece word model trained on the caption vocabulary with T5's ids
   (pad 0, eos 1, unk 2), embedded in the text-encoder file as ComfyUI's `spiece_model`. Its
   normalizer (`demo_normalization_rules`) is nmt_nfkc_cf (NFKC, case folding) that also turns
   punctuation and quotes into spaces, so "A Red circle moving right." means what the caption
   does. `--stage tokenizer` rebuilds only it, into the saved text encoder (same pieces and ids;
   the committed file's tokenizer was made that way, after training, with the same rules).
4. Text encoder + DiT, trained together with the flow-matching loss Wan uses
   (x_s = (1 - s) x0 + s noise, target noise - x0, timestep s * 1000): transformers'
   UMT5EncoderModel at d_model 64, and our own `models/wan/model.py` WanModel at width 256
   (2 heads of 128, as every Wan release), 4 blocks. 10% of the captions are dropped to "" so
   classifier-free guidance works with an empty negative prompt. The saved weights are an EMA.
5. VAE decoder only, 150 steps on 17-frame clips (the encoder, hence the DiT's latents, frozen).

Deterministic for a given torch version and thread count (seeded init, data from seeds, one
generator for all noise, deterministic algorithms). Times on the 2-core CI machine: see the
log line printed at the end (and README / DEVELOPING.md).
"""
from __future__ import annotations

import argparse
import copy
import io
import itertools
import math
import os
import struct
import sys
import tempfile
import time
import unicodedata

import torch
from safetensors import safe_open

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from demo.data import COLORS, DIRECTIONS, SHAPES, make_clip  # noqa: E402
from demo.train_vae import VAE_PATH, finetune_decoder, finetune_vae, save_vae, train_vae  # noqa: E402

WEIGHTS = os.path.join(ROOT, "demo", "weights")
TE_PATH = os.path.join(WEIGHTS, "text_encoders", "videoforge_demo_umt5.safetensors")
DIT_PATH = os.path.join(WEIGHTS, "diffusion_models", "videoforge_demo_wan_t2v.safetensors")

FRAMES, SIZE = 17, 64
CAPTIONS = [f"a {c} {s} moving {d}" for c, s, d in itertools.product(COLORS, SHAPES, DIRECTIONS)]


def log(msg: str) -> None:
    print(msg, flush=True)


# ----------------------------------------------------------------------------------- tokenizer
def is_punctuation(cp: int) -> bool:
    """BERT's BasicTokenizer test: the ASCII symbols and punctuation (!"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~)
    and every Unicode punctuation character (general category P*: quotes, dashes, brackets, ...)."""
    if 33 <= cp <= 47 or 58 <= cp <= 64 or 91 <= cp <= 96 or 123 <= cp <= 126:
        return True
    return unicodedata.category(chr(cp)).startswith("P")


def decode_charsmap(blob: bytes) -> dict[str, str]:
    """A SentencePiece `precompiled_charsmap` -> its rules {source: replacement} (what the C++
    `Builder::DecompileCharsMap` gives). The blob is a little-endian uint32 trie size, a
    darts-clone double-array trie over the UTF-8 sources, then the NUL-terminated replacements
    the trie's values point into. In the trie, node n's child for byte c is the unit at
    n ^ offset(n) ^ c whose label is c, and no two nodes share an offset; so every labelled
    unit u names its parent's offset as u ^ label(u), and the trie is walked one byte level at
    a time for all nodes at once."""
    import numpy as np

    size, = struct.unpack_from("<I", blob, 0)
    units = np.frombuffer(blob, "<u4", size // 4, 4).astype(np.int64)
    targets = blob[4 + size:]
    pos = np.arange(units.size)
    base = pos ^ ((units >> 10) << ((units & (1 << 9)) >> 6))   # offset(unit), darts-clone's encoding
    label = units & ((1 << 31) | 0xFF)        # leaf units have bit 31 set: never a byte label
    labelled = pos[(label >= 1) & (label <= 255)]
    order = np.argsort(labelled ^ label[labelled], kind="stable")
    by_parent_base = (labelled ^ label[labelled])[order]
    labelled = labelled[order]
    rules, nodes, keys = {}, np.zeros(1, np.int64), [b""]
    while nodes.size:
        lo = np.searchsorted(by_parent_base, base[nodes], "left")
        count = np.searchsorted(by_parent_base, base[nodes], "right") - lo
        parent = np.repeat(np.arange(nodes.size), count)
        nodes = labelled[np.repeat(lo - np.cumsum(count) + count, count) + np.arange(count.sum())]
        keys = [keys[p] + bytes((c,)) for p, c in zip(parent.tolist(), label[nodes].tolist())]
        for i in np.nonzero((units[nodes] >> 8) & 1)[0].tolist():
            start = int(units[base[nodes[i]]] & ((1 << 31) - 1))   # the leaf, at the node's offset
            rules[keys[i].decode("utf-8")] = targets[start:targets.index(b"\0", start)].decode("utf-8")
    return rules


def demo_normalization_rules(nmt_nfkc_cf: dict[str, str]) -> dict[str, str]:
    """SentencePiece's nmt_nfkc_cf rules (NFKC, case folding, odd spaces to a space) with every
    punctuation character (`is_punctuation`), and any that a rule produces (fullwidth "！", "…"),
    turned into a space (SentencePiece then collapses runs of spaces and trims the ends), so
    "A Blue circle, moving RIGHT." and "“a blue circle moving right!”" tokenize as "a blue circle
    moving right" does. Real tokenizers split punctuation off; a space does that, without the
    punctuation tokens the demo never saw (they would be <unk>: "right." was one)."""
    def fold(text: str) -> str:
        return "".join(" " if is_punctuation(ord(ch)) else ch for ch in text)

    rules = {src: fold(dst) for src, dst in nmt_nfkc_cf.items()}
    rules.update({chr(cp): " " for cp in range(0x110000)
                  if not 0xD800 <= cp <= 0xDFFF and is_punctuation(cp)})
    return rules


def spm_pieces(spm_bytes: bytes) -> list[tuple[str, float, int]]:
    """(piece, score, type) by id: what the trained embeddings are indexed by."""
    from sentencepiece import sentencepiece_model_pb2

    model = sentencepiece_model_pb2.ModelProto.FromString(spm_bytes)
    return [(p.piece, p.score, p.type) for p in model.pieces]


def _train_spm(sentences: list[str], vocab_size: int, **normalizer) -> bytes:
    import sentencepiece as spm

    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(sentences), model_writer=buf, vocab_size=vocab_size,
        model_type="word", pad_id=0, eos_id=1, unk_id=2, bos_id=-1, character_coverage=1.0,
        hard_vocab_limit=False, num_threads=1, minloglevel=2, **normalizer,
    )
    return buf.getvalue()


def train_tokenizer(sentences: list[str], vocab_size: int = 32) -> bytes:
    """Serialized SentencePiece model with T5 / UMT5 special ids (pad 0, eos 1, unk 2, no bos),
    trained in memory: the form ComfyUI embeds as `spiece_model`. Word pieces (one id per
    caption word; other words map to <unk>) with `demo_normalization_rules` as its normalizer
    (a user-defined rule table compiled into the model), so case, punctuation, quotes and extra
    spaces do not change the ids: "A Red Circle moving right." works too. The captions have
    none of these, so the pieces and ids are those of a plain nmt_nfkc_cf model."""
    from sentencepiece import sentencepiece_model_pb2

    base = _train_spm(sentences, vocab_size, normalization_rule_name="nmt_nfkc_cf")
    charsmap = sentencepiece_model_pb2.ModelProto.FromString(base).normalizer_spec.precompiled_charsmap
    rules = demo_normalization_rules(decode_charsmap(charsmap))

    def hex_cps(text: str) -> str:
        return " ".join(f"{ord(c):X}" for c in text)

    with tempfile.TemporaryDirectory() as tmp:
        tsv = os.path.join(tmp, "demo_rules.tsv")  # SentencePiece's rule format: source \t target
        with open(tsv, "w", encoding="utf-8") as f:
            f.writelines(f"{hex_cps(src)}\t{hex_cps(dst)}\n" for src, dst in sorted(rules.items()))
        model = sentencepiece_model_pb2.ModelProto.FromString(
            _train_spm(sentences, vocab_size, normalization_rule_tsv=tsv))
    model.normalizer_spec.ClearField("normalization_rule_tsv")  # the temporary file's path
    out = model.SerializeToString()
    if spm_pieces(out) != spm_pieces(base):
        raise RuntimeError("demo tokenizer: the normalization rules changed the pieces")
    return out


def embed_tokenizer(path: str, spm_bytes: bytes) -> None:
    """Replace the `spiece_model` of a saved text encoder (stage `tokenizer`), keeping every other
    tensor and the metadata. Only a tokenizer with the same pieces and ids is accepted: the
    trained embeddings are indexed by those ids."""
    from safetensors.torch import load_file, save_file

    sd, meta = load_file(path), file_metadata(path)
    if spm_pieces(sd["spiece_model"].numpy().tobytes()) != spm_pieces(spm_bytes):
        raise RuntimeError(f"{path}: the new tokenizer's pieces differ from the trained one's; retrain "
                           "(--stage dit) instead")
    sd["spiece_model"] = torch.frombuffer(bytearray(spm_bytes), dtype=torch.uint8)
    save_file(sd, path, metadata=meta)


def text_config(vocab: int):
    from transformers import UMT5Config

    return UMT5Config(vocab_size=vocab, d_model=64, d_ff=128, d_kv=32, num_heads=2, num_layers=2,
                      num_decoder_layers=0, relative_attention_num_buckets=32,
                      relative_attention_max_distance=128, feed_forward_proj="gated-gelu",
                      is_encoder_decoder=False, dropout_rate=0.0, use_cache=False,
                      tie_word_embeddings=False, pad_token_id=0, eos_token_id=1)


# ----------------------------------------------------------------------------------- VAE
def file_metadata(path: str) -> dict[str, str]:
    """A safetensors file's metadata (what earlier stages recorded), as a new dict."""
    with safe_open(path, "pt") as f:
        return dict(f.metadata() or {})


def standardise_latents(path: str, clips: int = 256, seed: int = 999) -> tuple[list[float], list[float]]:
    """Make the saved VAE's normalised latents ~N(0, 1) per channel on the training clips, as
    the real Wan VAE's are on real video (the DiT's noise has unit scale).

    The encoder's 1x1x1 output conv (`conv1`) and the decoder's 1x1x1 input conv (`conv2`) absorb
    an exact per-channel affine map: encode gives (latent - mu) / sigma, decode undoes it, the
    reconstruction is unchanged (up to fp16 rounding of the two small convs).
    Returns the measured (mu, sigma) of the latents before the change."""
    from safetensors.torch import load_file, save_file

    from models.loader import load_video_vae
    from models.wan.vae import LATENT_MEAN, LATENT_STD

    vae = load_video_vae(path, "fp32")
    lat = torch.cat([vae.encode(torch.stack([make_clip(seed * 1_000_000 + i, FRAMES, SIZE, SIZE)[0]
                                             for i in range(s, s + 16)])) for s in range(0, clips, 16)])
    mu = lat.mean((0, 2, 3, 4)).double()
    sigma = lat.std((0, 2, 3, 4)).double()
    m, sd_ = torch.tensor(LATENT_MEAN, dtype=torch.float64), torch.tensor(LATENT_STD, dtype=torch.float64)
    # raw encoder mean r -> a * r + b, so that (a r + b - m) / sd = ((r - m) / sd - mu) / sigma
    a = 1 / sigma
    b = m - (m + mu * sd_) / sigma
    sd = {k: v.double() for k, v in load_file(path).items()}
    z = len(LATENT_MEAN)
    w1, b1 = sd["conv1.weight"], sd["conv1.bias"]          # [2z, 2z, 1, 1, 1]: rows 0..z-1 = mean
    w1[:z] *= a.view(-1, 1, 1, 1, 1)
    b1[:z] = b1[:z] * a + b
    w2, b2 = sd["conv2.weight"], sd["conv2.bias"]          # [z, z, 1, 1, 1] on the latent
    b2 -= (w2[:, :, 0, 0, 0] @ (b / a))
    w2 /= a.view(1, -1, 1, 1, 1)
    meta = file_metadata(path)
    meta["latents_standardised"] = "conv1/conv2 absorb the per-channel mean/std of the training clips"
    save_file({k: v.half().contiguous() for k, v in sd.items()}, path, metadata=meta)
    return mu.tolist(), sigma.tolist()


def standardise(path: str) -> None:
    mu, sigma = standardise_latents(path)
    log("vae: latent mean " + " ".join(f"{v:+.2f}" for v in mu) +
        "\n     latent std  " + " ".join(f"{v:.2f}" for v in sigma) + "\n     -> standardised")


# ----------------------------------------------------------------------------------- data
def encode_dataset(n: int, seed: int) -> tuple[torch.Tensor, list[str]]:
    """n clips drawn from seeds (seed * 1_000_000 + i) -> (normalised latents [n, 16, 5, 8, 8],
    captions), encoded by our loader + VAE from the saved file (what Encode Video does)."""
    from models.loader import load_video_vae

    vae = load_video_vae(VAE_PATH, "fp32")
    lat, caps, t0 = [], [], time.time()
    for s in range(0, n, 16):
        clips = [make_clip(seed * 1_000_000 + i, FRAMES, SIZE, SIZE) for i in range(s, min(n, s + 16))]
        lat.append(vae.encode(torch.stack([c for c, _ in clips])))
        caps += [c for _, c in clips]
        if s % 512 == 0:
            log(f"data  {s + len(clips):5d}/{n} clips encoded  {time.time() - t0:.0f} s")
    return torch.cat(lat), caps


# ----------------------------------------------------------------------------------- models
def dit_config(text_dim: int):
    from models.wan.model import WanConfig

    return WanConfig(in_dim=16, dim=256, ffn_dim=768, freq_dim=256, text_dim=text_dim, out_dim=16,
                     num_heads=2, num_layers=4)


def init_dit(cfg) -> torch.nn.Module:
    """WanModel with Wan's own initialisation: xavier linears, zero biases, small random
    modulation tables, zero output head (the model starts by predicting 0)."""
    from models.wan.model import WanModel

    dit = WanModel(cfg)
    for m in dit.modules():
        if isinstance(m, torch.nn.Linear):
            torch.nn.init.xavier_uniform_(m.weight)
            torch.nn.init.zeros_(m.bias)
    torch.nn.init.xavier_uniform_(dit.patch_embedding.weight.flatten(1))
    for name, p in dit.named_parameters():
        if name.endswith("modulation"):
            with torch.no_grad():
                p.copy_(torch.randn(p.shape) / cfg.dim ** 0.5)
    torch.nn.init.zeros_(dit.head.head.weight)
    return dit


def text_embed(te, tok, captions: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """What `UMT5TextEncoder.encode` gives the DiT (zero past each prompt), with gradients."""
    ids, lens = tok(captions)
    mask = (torch.arange(ids.shape[1])[None] < lens[:, None]).long()
    h = te(input_ids=ids, attention_mask=mask).last_hidden_state
    return h * mask[..., None], lens


def train_dit(latents: torch.Tensor, captions: list[str], spm_bytes: bytes, steps: int,
              batch: int, lr: float, seed: int, shift: float, ema_decay: float):
    from transformers import UMT5EncoderModel

    from models.wan.text_encoder import UMT5Tokenizer
    from models.sampling.schedules import shift_sigmas

    tok = UMT5Tokenizer(spm_bytes=spm_bytes, source="demo tokenizer")
    torch.manual_seed(seed)
    te = UMT5EncoderModel(text_config(tok.vocab_size)).float().train()
    dit = init_dit(dit_config(te.config.d_model)).float().train()
    params = list(te.parameters()) + list(dit.parameters())
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.01, betas=(0.9, 0.99))
    warm = max(1, steps // 20)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda i: min(1.0, (i + 1) / warm) * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * i / steps))))
    ema = [copy.deepcopy(te).eval().requires_grad_(False), copy.deepcopy(dit).eval().requires_grad_(False)]
    g = torch.Generator().manual_seed(seed + 7)
    n, t0, avg = latents.shape[0], time.time(), None
    for step in range(steps):
        idx = torch.randint(n, (batch,), generator=g)
        x0 = latents[idx]
        caps = [captions[i] if float(torch.rand(1, generator=g)) >= 0.1 else "" for i in idx.tolist()]
        # Flow matching as Wan: sigma shifted toward noise the way the sampler's schedule is.
        sigma = shift_sigmas(torch.rand(batch, generator=g), shift)
        noise = torch.randn(x0.shape, generator=g)
        s = sigma.view(-1, 1, 1, 1, 1)
        xt = (1 - s) * x0 + s * noise
        ctx, lens = text_embed(te, tok, caps)
        v = dit(xt, sigma * 1000, ctx, context_lens=lens)
        loss = (v - (noise - x0)).square().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        d = min(ema_decay, (step + 1) / (step + 10))
        with torch.no_grad():
            for e, live in zip(ema, (te, dit)):
                for pe, pl in zip(e.parameters(), live.parameters()):
                    pe.lerp_(pl, 1 - d)
        avg = loss.item() if avg is None else 0.98 * avg + 0.02 * loss.item()
        if step % 50 == 0 or step == steps - 1:
            log(f"dit step {step:5d}  loss {loss.item():.4f} (avg {avg:.4f})  lr {sched.get_last_lr()[0]:.2e}  "
                f"{time.time() - t0:.0f} s")
    return ema[0], ema[1], tok


# ----------------------------------------------------------------------------------- saving
def save_text_encoder(te, spm_bytes: bytes, path: str, metadata: dict[str, str]) -> None:
    """ComfyUI umt5_xxl_fp16 layout: transformers names, fp16, the `encoder.embed_tokens`
    duplicate, SentencePiece model as a uint8 `spiece_model` tensor."""
    from safetensors.torch import save_file

    sd = {k: v.detach().half().contiguous() for k, v in te.state_dict().items()}
    sd["encoder.embed_tokens.weight"] = sd["shared.weight"].clone()
    sd["spiece_model"] = torch.frombuffer(bytearray(spm_bytes), dtype=torch.uint8)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    save_file(sd, path, metadata=metadata)


def save_dit(dit, path: str, metadata: dict[str, str]) -> None:
    """ComfyUI wan2.1_t2v_*_fp16 layout: official names under `model.diffusion_model.`, fp16."""
    from safetensors.torch import save_file

    sd = {"model.diffusion_model." + k: v.detach().half().contiguous() for k, v in dit.state_dict().items()}
    os.makedirs(os.path.dirname(path), exist_ok=True)
    save_file(sd, path, metadata=metadata)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--stage", choices=("all", "vae", "vae-finetune", "dit", "vae-decoder", "tokenizer"),
                    default="all",
                    help="all: VAE (train, 9-frame fine-tune) then DiT + text encoder; "
                         "vae-finetune: only the fine-tune of the saved VAE; dit: reuse the saved VAE; "
                         "vae-decoder: only the decoder's 17-frame fine-tune; "
                         "tokenizer: only the text encoder's spiece_model (same ids, new normalizer)")
    ap.add_argument("--vae-steps", type=int, default=900)
    ap.add_argument("--vae-finetune-steps", type=int, default=250)
    ap.add_argument("--vae-decoder-steps", type=int, default=150)
    ap.add_argument("--clips", type=int, default=1536)
    ap.add_argument("--steps", type=int, default=3000)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--lr", type=float, default=4e-4)
    ap.add_argument("--shift", type=float, default=2.0, help="sigma shift (the demo samples with it too)")
    ap.add_argument("--ema", type=float, default=0.998)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()

    torch.set_num_threads(args.threads)
    torch.use_deterministic_algorithms(True)
    t_all = time.time()
    meta = {"trained_by": "demo/train.py", "seed": str(args.seed)}
    if args.stage in ("all", "vae"):
        t0 = time.time()
        vae = train_vae(args.vae_steps, seed=args.seed, log=log)
        save_vae(vae, VAE_PATH, {**meta, "steps": str(args.vae_steps), "dim": "16"})
        standardise(VAE_PATH)
        log(f"vae: trained in {time.time() - t0:.0f} s")
    if args.stage in ("all", "vae", "vae-finetune"):
        # This order is the one the committed file was made with: the 9-frame fine-tune came
        # after the first run (1 / 5-frame clips) decoded 17-frame clips blurred past frame 4.
        t0 = time.time()
        vae_meta = file_metadata(VAE_PATH)
        vae = finetune_vae(VAE_PATH, args.vae_finetune_steps, seed=args.seed, log=log)
        save_vae(vae, VAE_PATH, {**vae_meta, "finetune_steps_9_frames": str(args.vae_finetune_steps)})
        standardise(VAE_PATH)
        log(f"vae: wrote {VAE_PATH} ({os.path.getsize(VAE_PATH) / 1e6:.1f} MB), fine-tuned in "
            f"{time.time() - t0:.0f} s")
    if args.stage in ("all", "dit"):
        t0 = time.time()
        latents, captions = encode_dataset(args.clips, args.seed)
        log(f"data: {len(captions)} clips, latent std {latents.std():.3f} in {time.time() - t0:.0f} s")
        spm_bytes = train_tokenizer(CAPTIONS)
        t0 = time.time()
        te, dit, tok = train_dit(latents, captions, spm_bytes, args.steps, args.batch, args.lr,
                                 args.seed, args.shift, args.ema)
        run = {**meta, "steps": str(args.steps), "clips": str(args.clips), "shift": str(args.shift)}
        save_text_encoder(te, spm_bytes, TE_PATH, run)
        save_dit(dit, DIT_PATH, run)
        log(f"dit: wrote {DIT_PATH} ({os.path.getsize(DIT_PATH) / 1e6:.1f} MB), {TE_PATH} "
            f"({os.path.getsize(TE_PATH) / 1e6:.1f} MB, vocab {tok.vocab_size}) in {time.time() - t0:.0f} s")
    if args.stage in ("all", "vae-decoder"):
        # Decoder side only: the latents the DiT learned stay exactly the same.
        t0 = time.time()
        vae_meta = file_metadata(VAE_PATH)
        vae = finetune_decoder(VAE_PATH, args.vae_decoder_steps, seed=args.seed, log=log)
        save_vae(vae, VAE_PATH, {**vae_meta, "decoder_steps_17_frames": str(args.vae_decoder_steps)})
        log(f"vae: decoder fine-tuned on 17-frame clips in {time.time() - t0:.0f} s")
    if args.stage == "tokenizer":
        # The trained embeddings are indexed by the ids, which embed_tokenizer checks are unchanged.
        embed_tokenizer(TE_PATH, train_tokenizer(CAPTIONS))
        log(f"tokenizer: rewrote the spiece_model of {TE_PATH}")
    log(f"total {time.time() - t_all:.0f} s with {args.threads} threads")


if __name__ == "__main__":
    main()
