"""The judge of the demo's semantic test (demo/semantics.py) on clips whose content is known."""
import numpy as np
import pytest
import torch

from demo.data import make_clip
from demo.semantics import analyse, parse_prompt


def frames_of(seed: int, **kw) -> torch.Tensor:
    clip, caption = make_clip(seed, 17, 64, 64, **kw)
    return ((clip + 1) / 2).permute(1, 2, 3, 0), caption


@pytest.mark.parametrize("seed", range(40))
def test_training_clips_read_as_their_caption(seed):
    frames, caption = frames_of(seed)
    track = analyse(frames)
    assert track.matches(*parse_prompt(caption)), f"{caption}: {track.describe()}"


def test_reversed_clip_moves_the_other_way():
    frames, _ = frames_of(3, color="green", direction="left")
    assert analyse(frames).direction == "left"
    assert analyse(frames.flip(0)).direction == "right"


def test_channel_swap_changes_the_colour():
    frames, _ = frames_of(4, color="red", direction="up")
    assert analyse(frames).colour == "red"
    assert analyse(frames[..., [2, 1, 0]]).colour == "blue"


def test_still_or_noise_is_no_match():
    frames, caption = frames_of(5)
    still = frames[:1].expand(17, -1, -1, -1)
    assert analyse(still).direction is None
    assert not analyse(still).matches(*parse_prompt(caption))
    noise = torch.rand(17, 64, 64, 3, generator=torch.Generator().manual_seed(0))
    assert not analyse(noise).matches(*parse_prompt(caption))
    assert analyse(torch.full((17, 64, 64, 3), 0.7)).colour is None


def test_uint8_frames_as_decoded_from_mp4():
    frames, caption = frames_of(6)
    as_u8 = (frames.numpy() * 255).round().astype(np.uint8)
    assert analyse(as_u8).matches(*parse_prompt(caption))


def test_parse_prompt():
    assert parse_prompt("A Blue square moving up") == ("blue", "up")
    with pytest.raises(ValueError, match="names no colour"):
        parse_prompt("a cat on a mat")
