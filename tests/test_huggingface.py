"""Hugging Face models built from small configs (no download): the probes leave training
bitwise unchanged, and ``gradient_checkpointing_enable()`` (either ``use_reentrant``) logs the
same tags and values as the model without checkpointing."""
import pytest
import torch

import probes

transformers = pytest.importorskip("transformers")

VOCAB, LENGTH = 50, 16


def gpt2():
    config = transformers.GPT2Config(vocab_size=VOCAB, n_positions=LENGTH, n_embd=16, n_layer=2, n_head=2)
    return transformers.GPT2LMHeadModel(config)


def bert():
    config = transformers.BertConfig(vocab_size=VOCAB, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                                     intermediate_size=32, max_position_embeddings=LENGTH, num_labels=3)
    return transformers.BertForSequenceClassification(config)


def train(build, checkpointing=None, watch=True, steps=4):
    """Losses and the sink of a few AdamW steps; ``checkpointing``: None, "reentrant" or "not"."""
    torch.manual_seed(0)
    model = build()
    model.train()
    if checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": checkpointing == "reentrant"})
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    gen = torch.Generator().manual_seed(1)
    sink, losses = probes.MemorySink(), []
    monitor = probes.watch(model, sink=sink, every=2, optimizer=opt) if watch else None
    for _ in range(steps):
        ids = torch.randint(0, VOCAB, (4, LENGTH), generator=gen)
        mask = torch.ones_like(ids)
        mask[:, LENGTH - 3:] = 0  # padding at the end of every sequence
        labels = ids if build is gpt2 else ids[:, 0] % 3
        opt.zero_grad()
        loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        loss.backward()
        if monitor is not None:
            monitor.log_loss(loss)
        opt.step()
        losses.append(loss.detach())
    if monitor is not None:
        monitor.detach()
    return model, losses, sink


@pytest.mark.parametrize("build", [gpt2, bert], ids=["gpt2", "bert"])
def test_probes_leave_hugging_face_training_bitwise_unchanged(build):
    probed, losses, sink = train(build)
    bare, bare_losses, _ = train(build, watch=False)
    assert torch.equal(torch.stack(losses), torch.stack(bare_losses))
    for (name, a), b in zip(probed.named_parameters(), bare.parameters()):
        assert torch.equal(a, b), name
    if build is gpt2:  # the head is tied to the token embedding: one parameter, one name
        assert "grad_norm/transformer.wte.weight" in sink.scalars and "grad_norm/lm_head.weight" not in sink.scalars
    leftover = sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in probed.modules())
    assert leftover == 0


@pytest.mark.parametrize("mode", ["reentrant", "not"])
@pytest.mark.parametrize("build", [gpt2, bert], ids=["gpt2", "bert"])
def test_gradient_checkpointing_logs_what_the_plain_model_logs(build, mode):
    _, _, plain = train(build)
    _, _, checkpointed = train(build, checkpointing=mode)
    assert set(checkpointed.scalars) == set(plain.scalars)
    assert not any("#" in tag for tag in plain.scalars)  # no module of these is called twice
    for tag, series in plain.scalars.items():
        assert checkpointed.scalars[tag] == series, tag
