"""Random training batches and a gradient-recording optimizer, shared by test_training_modes and test_compile."""
import torch

IMG_SIZE, NUM_WORDS = 64, 20  # 64 px: the smallest size whose last stage has more than one pixel


def token_batch(batch_size, seed):
    generator = torch.Generator().manual_seed(seed)
    lengths = torch.randint(3, NUM_WORDS, (batch_size,), generator=generator)
    input_ids = torch.randint(1000, 2000, (batch_size, NUM_WORDS), generator=generator)
    attention_mask = (torch.arange(NUM_WORDS)[None] < lengths[:, None]).long()
    return input_ids * attention_mask, attention_mask


def training_batches(num_batches, batch_size, seed=0):
    """Training-loader items (images, targets, input_ids (B, 1, N_l), attention_mask (B, 1, N_l))."""
    generator = torch.Generator().manual_seed(seed)
    batches = []
    for i in range(num_batches):
        images = torch.randn(batch_size, 3, IMG_SIZE, IMG_SIZE, generator=generator)
        targets = (torch.rand(batch_size, IMG_SIZE, IMG_SIZE, generator=generator) < 0.1 + 0.2 * i).long()
        input_ids, attention_mask = token_batch(batch_size, seed=seed + i)
        batches.append((images, targets, input_ids[:, None], attention_mask[:, None]))
    return batches


class RecordingSGD(torch.optim.SGD):
    """Plain SGD that keeps, for every step, the gradients it applied (by parameter name)."""

    def __init__(self, named_params, lr):
        self.names, params = zip(*named_params)
        super().__init__(params, lr=lr)
        self.applied = []

    def step(self, closure=None):
        params = self.param_groups[0]["params"]
        self.applied.append({name: p.grad.clone() for name, p in zip(self.names, params) if p.grad is not None})
        return super().step(closure)
