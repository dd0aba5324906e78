import numpy as np
import torch

from hw2.augment import (Loader, augment_batch, channel_stats, channel_tensors, cutout, normalize, parse_record,
                         step_generator)

MEAN, STD = [100.0, 110.0, 120.0], [50.0, 60.0, 70.0]


def test_parse_record_without_training_only_normalises():
    record = np.random.default_rng(0).integers(0, 256, 3072).astype(np.uint8)
    out = parse_record(record, training=False, rng=None, mean=MEAN, std=STD)
    assert out.shape == (3, 32, 32) and out.dtype == np.float32
    expected = (record.reshape(3, 32, 32) - np.array(MEAN).reshape(3, 1, 1)) / np.array(STD).reshape(3, 1, 1)
    np.testing.assert_allclose(out, expected, rtol=1e-6)


def _identify(image, original):
    """Which (dy, dx, flip) of the zero-padded original gives this 32x32 image."""
    padded = np.pad(original, ((0, 0), (4, 4), (4, 4)))
    for dy in range(9):
        for dx in range(9):
            crop = padded[:, dy:dy + 32, dx:dx + 32]
            for flip in (False, True):
                if np.array_equal(crop[:, :, ::-1] if flip else crop, image):
                    return dy, dx, flip
    raise AssertionError("not a pad-crop-flip of the original")


def test_batched_augmentation_matches_parse_record_distribution():
    """Both draw each of the 9 x 9 crops and the flip uniformly and independently; every batched
    output is exactly a pad-crop-flip of its input, as parse_record's are."""
    original = (np.arange(3072) % 251 + 1).astype(np.uint8).reshape(3, 32, 32)  # no zero pixels: crops are distinct
    n = 4000
    rng = np.random.default_rng(0)
    one_by_one = [_identify(parse_record(original.ravel(), True, rng, [0, 0, 0], [1, 1, 1]).astype(np.uint8), original)
                  for _ in range(n)]
    batch = torch.from_numpy(np.repeat(original[None], n, axis=0))
    out = augment_batch(batch, step_generator(0, 1, 2)).numpy()
    batched = [_identify(image, original) for image in out]
    for draws in (one_by_one, batched):
        dy, dx, flip = map(np.array, zip(*draws))
        for values, k in ((dy, 9), (dx, 9)):
            counts = np.bincount(values, minlength=k)
            assert np.all(np.abs(counts - n / k) < 5 * np.sqrt(n / k)), counts  # 5 sigma
        assert abs(flip.mean() - 0.5) < 5 * np.sqrt(0.25 / n)
        assert abs(np.corrcoef(dy, flip)[0, 1]) < 0.1 and abs(np.corrcoef(dx, dy)[0, 1]) < 0.1


def test_augment_batch_is_channels_last_and_a_pure_function_of_the_generator_seed():
    images = torch.randint(0, 256, (16, 3, 32, 32), dtype=torch.uint8)
    a = augment_batch(images, step_generator(0, 3, 4))
    assert a.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(a, augment_batch(images, step_generator(0, 3, 4)))
    assert not torch.equal(a, augment_batch(images, step_generator(0, 3, 5)))


def test_channel_stats_and_normalize():
    x = np.random.default_rng(0).integers(0, 256, (50, 3072)).astype(np.uint8)
    mean, std = channel_stats(x)
    planes = x.reshape(50, 3, 1024).transpose(1, 0, 2).reshape(3, -1)
    np.testing.assert_allclose(mean, planes.mean(1), rtol=1e-5)
    np.testing.assert_allclose(std, planes.std(1), rtol=1e-5)
    out = normalize(torch.from_numpy(x).view(50, 3, 32, 32), *channel_tensors(mean, std, "cpu"))
    np.testing.assert_allclose(out.mean((0, 2, 3)).numpy(), 0, atol=1e-4)
    np.testing.assert_allclose(out.std((0, 2, 3)).numpy(), 1, atol=1e-2)


def test_training_loader_covers_distinct_images_and_drops_the_last_partial_batch():
    x = np.repeat(np.arange(100, dtype=np.uint8)[:, None], 3072, 1)  # image i is all i
    y = np.arange(100)
    loader = Loader(x, y, 32, ([0, 0, 0], [1, 1, 1]), "cpu", training=True, seed=0)
    assert len(loader) == 3
    seen = []
    for _, images, labels in loader.batches(epoch=0):
        centre = images[:, 0, 16, 16].long()  # a padded crop keeps the centre pixel
        assert torch.equal(centre, labels)
        seen += labels.tolist()
    assert len(seen) == 96 and len(set(seen)) == 96
    other = [labels.tolist() for _, _, labels in loader.batches(epoch=1)]
    assert sum(other, []) != seen, "a fresh order each epoch"


def test_resuming_a_loader_mid_epoch_gives_the_same_batches():
    x = np.random.default_rng(0).integers(0, 256, (64, 3072)).astype(np.uint8)
    loader = Loader(x, np.arange(64) % 10, 16, (MEAN, STD), "cpu", training=True, seed=5)
    full = list(loader.batches(epoch=2))
    tail = list(loader.batches(epoch=2, start_step=2))
    assert [s for s, _, _ in tail] == [2, 3]
    for (_, a, la), (_, b, lb) in zip(full[2:], tail):
        assert torch.equal(a, b) and torch.equal(la, lb)


def test_a_training_batch_is_what_its_seed_epoch_step_and_rank_draw():
    """The batch's images and their crops and flips come from generators seeded by (seed, epoch) and
    (seed, epoch, step, rank) alone, drawn in this order: offsets, then flips. Pinned, as checkpoints'
    exact resumption and the runs already reported rest on it."""
    x = np.random.default_rng(0).integers(0, 256, (64, 3072)).astype(np.uint8)
    loader = Loader(x, np.arange(64), 8, (MEAN, STD), "cpu", training=True, seed=3, shard=(1, 2))
    step, images, labels = list(loader.batches(epoch=2))[1]
    order = torch.randperm(64, generator=step_generator(3, 2))[1::2]
    assert torch.equal(labels, order[8:16])
    generator = step_generator(3, 2, step, 1)
    offsets = torch.randint(0, 9, (2, 8), generator=generator)
    flips = torch.rand(8, generator=generator) < 0.5
    padded = torch.nn.functional.pad(torch.from_numpy(x[labels.numpy()]).view(8, 3, 32, 32), (4, 4, 4, 4))
    crops = [padded[i, :, dy:dy + 32, dx:dx + 32] for i, (dy, dx) in enumerate(offsets.T.tolist())]
    expected = torch.stack([crop.flip(2) if flip else crop for crop, flip in zip(crops, flips)])
    assert flips.any() and not flips.all()
    assert torch.equal(images, normalize(expected, *channel_tensors(MEAN, STD, "cpu")))


def test_data_parallel_shards_are_disjoint():
    x = np.zeros((64, 3072), np.uint8)
    shards = []
    for rank in range(2):
        loader = Loader(x, np.arange(64), 8, (MEAN, STD), "cpu", training=True, seed=0, shard=(rank, 2))
        assert len(loader) == 4
        shards.append({int(l) for _, _, labels in loader.batches(0) for l in labels})
    assert len(shards[0]) == len(shards[1]) == 32 and not shards[0] & shards[1]


def test_evaluation_loader_keeps_order_and_the_last_partial_batch():
    x = np.zeros((10, 3072), np.uint8)
    loader = Loader(x, np.arange(10), 4, (MEAN, STD), "cpu")
    assert [labels.tolist() for _, _, labels in loader.batches()] == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]


def test_downscaled_batches_keep_the_whole_image_at_a_lower_resolution():
    # Image i is i in its left half and 255 - i in its right half: a 16x16 version keeps both halves.
    left = np.arange(40, dtype=np.uint8)[:, None, None, None] * np.ones((1, 3, 32, 16), np.uint8)
    x = np.concatenate([left, 255 - left], axis=3).reshape(40, 3072)
    loader = Loader(x, np.arange(40), 8, ([0, 0, 0], [1, 1, 1]), "cpu")
    for _, images, labels in loader.batches(image_size=16):
        assert images.shape == (len(labels), 3, 16, 16) and images.is_contiguous(memory_format=torch.channels_last)
        torch.testing.assert_close(images[:, :, :, :7], labels.float()[:, None, None, None].expand(-1, 3, 16, 7))
        torch.testing.assert_close(images[:, :, :, 9:], 255 - labels.float()[:, None, None, None].expand(-1, 3, 16, 7))
    training = Loader(x, np.arange(40), 8, ([0, 0, 0], [1, 1, 1]), "cpu", training=True)
    full = [images for _, images, _ in training.batches(epoch=3)]
    small = [images for _, images, _ in training.batches(epoch=3, image_size=20)]
    assert all(s.shape[2:] == (20, 20) for s in small)
    torch.testing.assert_close(small[0], torch.nn.functional.interpolate(full[0], size=(20, 20), mode="bilinear",
                                                                        antialias=True, align_corners=False))


def test_cutout_sets_one_clipped_square_per_image_to_the_mean_and_leaves_the_rest():
    """Each image loses exactly the pixels of one size x size square centred on a drawn pixel, clipped at the
    border, set to 0 in all channels (the mean, after normalisation); centres cover the whole image."""
    n, size = 2000, 8
    images = torch.randn(n, 3, 32, 32).contiguous(memory_format=torch.channels_last) + 10  # no zeros before
    out = cutout(images.clone(), size, step_generator(0, 7, 7))
    assert out.shape == images.shape and out.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(cutout(images.clone(), size, step_generator(0, 7, 7)), out)  # a function of the seed
    cut = out == 0
    assert torch.equal(cut.all(1), cut.any(1)), "a pixel is cut in all three channels or in none"
    assert torch.equal(out[~cut], images[~cut])
    rows, columns = cut.all(1).any(2), cut.all(1).any(1)  # [n, 32]: rows and columns the square touches
    assert torch.equal(cut.all(1), rows[:, :, None] & columns[:, None, :]), "the cut pixels form one rectangle"
    for touched in (rows, columns):
        first, count = touched.int().argmax(1), touched.sum(1)
        assert count.min() >= size // 2 and count.max() == size
        ends = first + count  # a square clipped at the top/left starts at 0, at the bottom/right ends at 32
        assert torch.all((count == size) | (first == 0) | (ends == 32))
        centres = torch.where(first == 0, ends - size // 2, first + size // 2)
        assert set(centres.tolist()) == set(range(32)), "every row and column can be a centre"


def test_the_loader_cuts_out_training_images_only_and_each_step_draws_its_own_squares():
    x = np.full((64, 3072), 200, np.uint8)
    stats = ([100.0] * 3, [50.0] * 3)  # every pixel normalises to 2, padding to -2, a cut one to 0
    training = Loader(x, np.arange(64), 16, stats, "cpu", training=True, seed=1, cutout=8)
    batches = [images for _, images, _ in training.batches(epoch=0)]
    for images in batches:
        cut = (images == 0).all(1).sum((1, 2))
        assert cut.min() >= 16 and cut.max() == 64 and bool(((images == 0) | (images.abs() == 2)).all())
    again = [images for _, images, _ in training.batches(epoch=0, start_step=2)]
    assert torch.equal(again[0], batches[2]), "a resumed epoch cuts the same squares"
    assert not torch.equal((batches[0] == 0), (batches[1] == 0))
    evaluation = Loader(x, np.arange(64), 16, stats, "cpu", cutout=8)
    assert all(bool((images == 2).all()) for _, images, _ in evaluation.batches())


def test_cutout_off_draws_exactly_what_the_loader_drew_before_it_existed():
    """cutout 0 and 'random' flips leave the training batches as they were (reported runs rest on it)."""
    x = np.random.default_rng(0).integers(0, 256, (64, 3072)).astype(np.uint8)
    plain = Loader(x, np.arange(64), 16, (MEAN, STD), "cpu", training=True, seed=2)
    explicit = Loader(x, np.arange(64), 16, (MEAN, STD), "cpu", training=True, seed=2, cutout=0, flip="random")
    for (_, a, _), (_, b, _) in zip(plain.batches(epoch=1), explicit.batches(epoch=1)):
        assert torch.equal(a, b)


def test_alternate_flip_mirrors_each_image_in_every_other_epoch_from_a_seeded_first_choice():
    # Image i's left half is dark and its right half bright, with pad 0 crops, so a mirrored crop is told apart
    # by which side is brighter; labels are the image indices.
    half = np.zeros((3, 32, 32), np.uint8)
    half[:, :, 16:] = 255
    x = np.repeat(half.reshape(1, 3072), 200, 0)
    stats = ([0.0] * 3, [1.0] * 3)

    def mirrored(loader, epoch):
        out = {}
        for _, images, labels in loader.batches(epoch=epoch):
            bright_left = images[:, 0, :, :16].mean((1, 2)) > images[:, 0, :, 16:].mean((1, 2))
            out.update(zip(labels.tolist(), bright_left.tolist()))
        return out

    loader = Loader(x, np.arange(200), 20, stats, "cpu", training=True, seed=4, flip="alternate")
    epochs = [mirrored(loader, epoch) for epoch in range(4)]
    first = epochs[0]
    assert 60 < sum(first.values()) < 140, "the first choice is a coin toss per image"
    for epoch, flips in enumerate(epochs):
        assert flips == {i: f ^ bool(epoch % 2) for i, f in first.items()}
    same_seed = Loader(x, np.arange(200), 20, stats, "cpu", training=True, seed=4, flip="alternate")
    other_seed = Loader(x, np.arange(200), 20, stats, "cpu", training=True, seed=5, flip="alternate")
    assert mirrored(same_seed, 2) == epochs[2] and mirrored(other_seed, 0) != first
    coin = Loader(x, np.arange(200), 20, stats, "cpu", training=True, seed=4)
    a, b = mirrored(coin, 0), mirrored(coin, 1)
    assert 60 < sum(a[i] != b[i] for i in a) < 140, "random flips are independent between epochs"
