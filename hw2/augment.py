"""Augmentation (He et al.: pad 4, random 32x32 crop, random horizontal flip), its options (Cutout, alternating
flip) and normalisation.

`parse_record` treats one image with numpy, as the assignment asks; `augment_batch` does the same to a
whole uint8 batch in one gather on the batch's device, and is what training uses. `Loader` slices
batches from one uint8 tensor that lives on the device (no DataLoader workers: the data set is 150 MB).
"""
import functools

import numpy as np
import torch
import torch.nn.functional as F

PAD = 4
SIZE = 32


def channel_stats(x):
    """Per-channel mean and std in pixel units (0-255) of uint8 images [N, 3072]."""
    planes = x.reshape(len(x), 3, -1)
    mean = np.array([planes[:, c].mean(dtype=np.float64) for c in range(3)])
    std = np.array([planes[:, c].std(dtype=np.float64) for c in range(3)])
    return mean.astype(np.float32), std.astype(np.float32)


def pad_crop_flip(image, dy, dx, flip):
    """[3, 32, 32] -> padded by PAD zeros on each side, cropped back to 32x32 at (dy, dx) of the padded image,
    and mirrored left-right if flip: parse_record's augmentation with its draws given."""
    padded = np.pad(image, ((0, 0), (PAD, PAD), (PAD, PAD)))
    image = padded[:, dy:dy + SIZE, dx:dx + SIZE]
    return image[:, :, ::-1] if flip else image


def parse_record(record, training, rng, mean, std):
    """One image: [3072] uint8 -> [3, 32, 32] float32; in training padded by 4 zeros, randomly cropped
    back to 32x32 and flipped left-right with probability 1/2 (pad_crop_flip); then normalised per channel."""
    image = record.reshape(3, SIZE, SIZE)
    if training:
        dy, dx = rng.integers(0, 2 * PAD + 1, size=2)
        image = pad_crop_flip(image, dy, dx, rng.random() < 0.5)
    mean = np.asarray(mean, np.float32).reshape(3, 1, 1)
    std = np.asarray(std, np.float32).reshape(3, 1, 1)
    return (image.astype(np.float32) - mean) / std


@functools.lru_cache
def crop_grids(device):
    """The flat indices into a padded 40x40 image of its 32x32 top-left crop, plain and mirrored left-right
    ([32, 32] each, on device), made once: a crop at (dy, dx) is these plus dy * 40 + dx."""
    side = SIZE + 2 * PAD
    ramp = torch.arange(SIZE, device=device)
    return ramp[:, None] * side + ramp, ramp[:, None] * side + ramp.flip(0)


def augment_batch(images, generator, flip=None):
    """uint8 [B, 3, 32, 32] -> uint8 [B, 3, 32, 32] (channels_last): the same crop and flip as
    parse_record, drawn independently per image, done as one gather from the padded images (the flip is
    folded into the index). `flip`, a bool [B] on the images' device, mirrors those images instead of a coin
    toss each. Few and small device operations, as a training step runs it every time."""
    n, side = len(images), SIZE + 2 * PAD
    padded = F.pad(images.permute(0, 2, 3, 1), (0, 0, PAD, PAD, PAD, PAD)).reshape(n, side * side, 3)  # NHWC
    offsets = torch.randint(0, 2 * PAD + 1, (2, n), generator=generator, device=generator.device).to(images.device)
    if flip is None:
        flip = (torch.rand(n, generator=generator, device=generator.device) < 0.5).to(images.device)
    plain, mirrored = crop_grids(images.device)
    index = (offsets[0] * side + offsets[1])[:, None, None] + torch.where(flip[:, None, None], mirrored, plain)
    out = padded.gather(1, index.view(n, -1, 1).expand(-1, -1, 3))     # [B, 32 * 32, 3]
    return out.view(n, SIZE, SIZE, 3).permute(0, 3, 1, 2)               # NCHW view of NHWC memory


def cutout(images, size, generator):
    """Normalised float [B, 3, 32, 32] -> the same tensor, its memory format kept, with one size x size square of
    each image set to 0 in place, the data's mean (DeVries & Taylor 2017). The square's centre is drawn uniformly
    over the whole image, so near an edge part of it falls outside and less is cut: as the paper does, so that
    border pixels are cut as often as others."""
    n = len(images)
    centres = torch.randint(0, SIZE, (2, n), generator=generator, device=generator.device).to(images.device)
    start = (centres - size // 2)[:, :, None]                        # [2 (row, column), B, 1]
    ramp = torch.arange(SIZE, device=images.device)
    inside = (ramp >= start) & (ramp < start + size)                  # [2, B, 32]: rows, columns in the square
    return images.masked_fill_((inside[0, :, :, None] & inside[1, :, None, :])[:, None], 0.0)


def normalize(images, mean, std):
    """uint8 [B, 3, H, W] -> float32, per-channel (x - mean) / std, memory format kept; mean and std are
    float32 [1, 3, 1, 1] tensors on the images' device (channel_tensors)."""
    return (images - mean) / std  # uint8 - float32 is float32: the cast is part of the subtraction


def channel_tensors(mean, std, device):
    """Per-channel mean and std as the [1, 3, 1, 1] float32 tensors normalize takes, made once: building
    them from host values in every batch would copy them to the device, and wait for it, every step."""
    return [torch.as_tensor(v, dtype=torch.float32).view(1, 3, 1, 1).to(device) for v in (mean, std)]


def downscale(images, size):
    """float [B, 3, H, W] -> [B, 3, size, size], antialiased bilinear: the whole image at a lower resolution,
    as progressive resizing trains on."""
    out = F.interpolate(images, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    return out.contiguous(memory_format=torch.channels_last)


def step_seed(seed, *keys):
    """A 63-bit seed that is a pure function of (seed, *keys): batch (epoch, step) draws the same
    permutation and crops whether or not the run was interrupted before it."""
    state = np.random.SeedSequence([seed, *keys]).generate_state(2, np.uint64)[0]
    return int(state) & ((1 << 63) - 1)


def step_generator(seed, *keys, device="cpu"):
    """A torch.Generator seeded with step_seed(seed, *keys)."""
    return torch.Generator(device=device).manual_seed(step_seed(seed, *keys))


class Loader:
    """Batches of (normalised float images, labels) from uint8 images [N, 3072] held on `device`.

    Training batches follow a fresh seeded permutation each epoch, are augmented, and drop the last
    partial batch; evaluation batches are in order and complete. `stats` is the per-channel (mean, std) the
    images are normalised with. With shard (rank, world_size), world_size > 1, each rank takes a distinct shard
    of the permutation (data parallel). `cutout` and `flip` are Config's fields of those names: a Cutout square
    of that side (0: none), and 'random' flips or 'alternate' ones (each image mirrored in every other epoch,
    starting from a seeded coin toss of its own: Jordan 2024, "94% on CIFAR-10 in 3.29 seconds").
    """

    def __init__(self, x, y, batch_size, stats, device, training=False, seed=0, shard=(0, 1), cutout=0,
                 flip="random"):
        self.x = torch.as_tensor(x).view(-1, 3, SIZE, SIZE).to(device)
        self.y = torch.as_tensor(y).to(device)
        self.mean, self.std = channel_tensors(*stats, device)
        self.batch_size, self.device = batch_size, torch.device(device)
        self.training, self.seed, (self.rank, self.world_size) = training, seed, shard
        self.generator = torch.Generator(device=self.device)  # reseeded every step: cheaper than a new one
        self.cutout, self.first_flip = cutout, None
        if flip == "alternate":  # three keys: no epoch's permutation (two) or step's draws (four) share this seed
            first = torch.rand(len(self.x), generator=step_generator(seed, 0, 0)) < 0.5
            self.first_flip = first.to(self.device)

    def __len__(self):
        if self.training:
            return len(self.x) // self.world_size // self.batch_size
        return -(-len(self.x) // self.batch_size)

    def batches(self, epoch=0, start_step=0, image_size=SIZE):
        """Yield (step, images, labels) from step start_step of this epoch, the images downscaled (after
        augmentation) to image_size x image_size when that is under 32 (progressive resizing)."""
        if self.training:
            order = torch.randperm(len(self.x), generator=step_generator(self.seed, epoch))
            order = order[self.rank::self.world_size].to(self.device)
        for step in range(start_step, len(self)):
            if self.training:
                index = order[step * self.batch_size:(step + 1) * self.batch_size]
                self.generator.manual_seed(step_seed(self.seed, epoch, step, self.rank))
                flip = None if self.first_flip is None else self.first_flip[index] ^ bool(epoch % 2)
                images, labels = augment_batch(self.x[index], self.generator, flip), self.y[index]
            else:
                images = self.x[step * self.batch_size:(step + 1) * self.batch_size]
                labels = self.y[step * self.batch_size:(step + 1) * self.batch_size]
                images = images.contiguous(memory_format=torch.channels_last)
            images = normalize(images, self.mean, self.std)
            if self.training and self.cutout:
                cutout(images, self.cutout, self.generator)  # in place: normalize's output is new
            if image_size != SIZE:
                images = downscale(images, image_size)
            yield step, images, labels
