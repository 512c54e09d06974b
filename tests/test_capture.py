"""Captured tensors equal what the model's modules really computed.

References come from the model's own weights and a plain forward hook that
copies each value the moment its module returns it; never from our capture.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from parlai.agents.transformer.modules import TransformerGeneratorModel
from parlai.agents.transformer.transformer import TransformerGeneratorAgent
from parlai.core.dict import DictionaryAgent
from parlai.core.params import ParlaiParser

from anti_scaling.agents.capture import CapturePoint, capture_states
from anti_scaling.agents.plan import DistillPlan, DistillTerm, StatePair
from anti_scaling.agents.plan_checks import check_modules, check_plan, dry_run_batch
from anti_scaling.errors import DistillationError


def build_model(*args: str):
    """A tiny, untrained ParlAI transformer/generator model (no data, no files)."""
    parser = ParlaiParser(False, False)
    TransformerGeneratorAgent.add_cmdline_args(parser, partial_opt=None)
    opt = parser.parse_args(
        ['--embedding-size', '8', '--ffn-size', '16', '--n-layers', '2', *args]
    )
    dictionary = DictionaryAgent(opt)
    for word in 'a b c d e f g'.split():
        dictionary.add_token(word)
    torch.manual_seed(0)
    model = TransformerGeneratorModel(opt, dictionary)
    model.eval()
    return model, dictionary


def batch(dictionary):
    d = dictionary
    return dry_run_batch(d[d.null_token], d[d.start_token], d[d.end_token], d['c'])


class Snapshot:
    """Copies of a module's input and output taken when it returns."""

    def __init__(self, module):
        self.inputs, self.output = None, None
        self.handle = module.register_forward_hook(self.hook)

    def hook(self, _module, args, output):
        self.inputs = [a.clone() if torch.is_tensor(a) else a for a in args]
        self.output = output.clone() if torch.is_tensor(output) else output


@pytest.mark.parametrize('heads', [1, 2])
def test_captured_queries_are_the_q_lin_output(heads):
    model, dictionary = build_model('--n-heads', str(heads))
    attention = model.encoder.layers[0].attention
    snapshot = Snapshot(attention)
    q_point = CapturePoint('encoder.layers.0.attention.q_lin', 'output')
    text, label = batch(dictionary)
    plan = DistillPlan(
        terms=(DistillTerm('q', (StatePair(q_point, q_point, 'mse', 'encoder'),), 1),)
    )
    plan = check_plan(plan, model, model, (text, label))
    with torch.no_grad():
        with capture_states(model, [q_point], clone=plan.cloned['student']) as states:
            model(text, ys=label)
    query = snapshot.inputs[0]
    expected = F.linear(query, attention.q_lin.weight, attention.q_lin.bias)
    assert torch.allclose(states[q_point], expected, atol=1e-6)
    # ParlAI divides the queries in place; with one head that is q_lin's output
    assert (q_point in plan.cloned['student']) == (heads == 1)


def test_last_encoder_layer_is_captured_before_output_scaling():
    model, dictionary = build_model(
        '--n-heads', '2', '--variant', 'aiayn', '--output-scaling', '0.5'
    )
    last = model.encoder.layers[-1]
    snapshot = Snapshot(last)
    point = CapturePoint('encoder.layers.1', 'output')
    encoder = CapturePoint('encoder', 'output', 0)
    text, label = batch(dictionary)
    terms = (
        DistillTerm('h', (StatePair(point, point, 'mse', 'encoder'),), 1),
        DistillTerm('e', (StatePair(encoder, encoder, 'mse', 'encoder'),), 1),
    )
    plan = check_plan(DistillPlan(terms=terms), model, model, (text, label))
    assert point in plan.cloned['student']
    with torch.no_grad():
        with capture_states(
            model, [point, encoder], clone=plan.cloned['student']
        ) as states:
            model(text, ys=label)
    # the layer's own output, by the layer's own weights (post-LN 'aiayn')
    x, mask = snapshot.inputs[0], snapshot.inputs[1]
    attended = last.attention(x, mask=mask)[0]
    h = last.norm1(x + attended)
    h = last.norm2(h + last.ffn(h))
    h = h * mask.unsqueeze(-1).type_as(h)
    assert torch.allclose(states[point], h, atol=1e-5)
    assert torch.allclose(states[point], snapshot.output, atol=1e-6)
    # and the encoder's output is the scaled one
    assert torch.allclose(states[encoder], 0.5 * h, atol=1e-5)


def test_an_unexpected_in_place_change_is_an_error_not_a_wrong_value():
    model, dictionary = build_model('--n-heads', '1')
    q_point = CapturePoint('encoder.layers.0.attention.q_lin', 'output')
    text, label = batch(dictionary)
    with pytest.raises(RuntimeError, match='modified in place'):
        with torch.no_grad():
            with capture_states(model, [q_point]):
                model(text, ys=label)


def test_shared_embeddings_are_captured_per_caller():
    model, dictionary = build_model('--n-heads', '2')
    assert model.encoder.embeddings is model.decoder.embeddings
    text, label = batch(dictionary)
    on_encoder = CapturePoint('encoder.embeddings', 'output')
    on_decoder = CapturePoint('decoder.embeddings', 'output')
    check_modules(model, [on_encoder, on_decoder], 'student')
    with torch.no_grad():
        with capture_states(model, [on_encoder, on_decoder]) as states:
            model(text, ys=label)
    weight = model.embeddings.weight
    assert torch.equal(states[on_encoder], F.embedding(text, weight))
    assert states[on_decoder].shape[:2] == label.shape
    assert states.calls == {on_encoder: 1, on_decoder: 1}


def test_a_module_called_twice_is_refused():
    model, dictionary = build_model('--n-heads', '2')
    point = CapturePoint('embeddings', 'output')
    plan = DistillPlan(
        terms=(DistillTerm('emb', (StatePair(point, point, 'mse', 'encoder'),), 1),)
    )
    with pytest.raises(DistillationError, match='runs 2 times per forward pass'):
        check_plan(plan, model, model, batch(dictionary))
