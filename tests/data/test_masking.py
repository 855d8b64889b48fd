"""MLM corruption statistics, as BERT specifies them."""

import torch

from zerolm.data.masking import IGNORE_INDEX, mask_tokens

SPECIALS = torch.tensor([0, 1, 2, 3, 4])  # [PAD] [UNK] [CLS] [SEP] [MASK]


def _batch(n_rows=400, length=250, vocab=1000):
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(5, vocab, (n_rows, length), generator=g)
    ids[:, 0] = 2  # [CLS]
    ids[:, -1] = 3  # [SEP]
    ids[::7, -40:] = 0  # padding in some rows
    return ids


def test_masking_statistics_on_100k_tokens():
    ids = _batch()
    assert ids.numel() == 100_000
    corrupted, labels = mask_tokens(ids, mask_id=4, vocab_size=1000, special_ids=SPECIALS,
                                    generator=torch.Generator().manual_seed(0))
    chosen = labels != IGNORE_INDEX
    maskable = ~torch.isin(ids, SPECIALS)
    rate = chosen.sum().item() / maskable.sum().item()
    assert abs(rate - 0.15) <= 0.01
    assert not chosen[~maskable].any(), "special tokens and padding are never masked"
    assert torch.equal(labels[chosen], ids[chosen])
    n = chosen.sum().item()
    to_mask = (corrupted[chosen] == 4).sum().item() / n
    unchanged = (corrupted[chosen] == ids[chosen]).sum().item() / n
    random = 1 - to_mask - unchanged
    assert abs(to_mask - 0.8) <= 0.02
    assert abs(unchanged - 0.1) <= 0.02  # includes the ~0.1% of random draws that hit the same id
    assert abs(random - 0.1) <= 0.02
    assert torch.equal(corrupted[~chosen], ids[~chosen])


def test_whole_word_masking_masks_all_pieces_of_a_word():
    ids = _batch(50, 200)
    g = torch.Generator().manual_seed(2)
    word_starts = torch.rand(ids.shape, generator=g) < 0.6
    word_starts[:, 1] = True
    _, labels = mask_tokens(ids, mask_id=4, vocab_size=1000, special_ids=SPECIALS,
                            generator=torch.Generator().manual_seed(0), word_starts=word_starts)
    chosen = labels != IGNORE_INDEX
    maskable = ~torch.isin(ids, SPECIALS)
    # a continuation piece is chosen exactly when the piece before it (same word) is
    cont = ~word_starts & maskable
    cont[:, 0] = False
    prev = torch.roll(chosen, 1, dims=1)
    assert torch.equal(chosen[cont & torch.roll(maskable, 1, 1)], prev[cont & torch.roll(maskable, 1, 1)])
    assert abs(chosen.sum().item() / maskable.sum().item() - 0.15) < 0.03


def test_masking_is_deterministic_given_the_generator():
    ids = _batch(10, 50)
    a = mask_tokens(ids, mask_id=4, vocab_size=1000, special_ids=SPECIALS,
                    generator=torch.Generator().manual_seed(5))
    b = mask_tokens(ids, mask_id=4, vocab_size=1000, special_ids=SPECIALS,
                    generator=torch.Generator().manual_seed(5))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
