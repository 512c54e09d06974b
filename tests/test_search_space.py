"""The search space: parsing, defaults from the teacher, checks, sampling, pruning."""

from __future__ import annotations

import json
import math

import optuna  # the search extra (make installs it)
import pytest

from anti_scaling.errors import DistillationError
from anti_scaling.loss_terms import PREDICTION_KINDS
from anti_scaling.search.candidate import sample_candidate
from anti_scaling.search.checks import check_space
from anti_scaling.search.commands import default_train_args, trial_argv
from anti_scaling.search.prune import PruneRule, Reference, prune_reason, reply_cost
from anti_scaling.search.settings import SearchSettings
from anti_scaling.search.space import (
    ParamSpec,
    TeacherShape,
    build_space,
    default_space,
    parameter_kinds,
    parse_cli_spec,
    read_space_file,
    searchable_flags,
)

TEACHER = TeacherShape(
    n_encoder_layers=2,
    n_decoder_layers=6,
    embedding_size=256,
    ffn_size=1024,
    n_heads=4,
    vocab=8000,
)


@pytest.fixture(scope='module')
def flags():
    return searchable_flags('transformer')


@pytest.fixture(scope='module')
def kinds(flags):
    return parameter_kinds(flags)


def space_with(flags, kinds, *params, teacher=TEACHER):
    return build_space(teacher, flags, None, [parse_cli_spec(p, kinds) for p in params])


def test_flags_come_from_the_agents_parser(flags):
    # every prediction objective the agents offer, new ones included by name
    assert flags['pred_loss_type'].choices == PREDICTION_KINDS.names
    assert {'skew_kl', 'taid'} <= set(flags['pred_loss_type'].choices)
    assert flags['pred_loss_coeff'].kind == 'float'
    assert flags['intermediate_steps'].kind == 'int'
    assert flags['freeze_encoder'].kind == 'bool'
    for never in (
        'teacher_model',
        'recipe',
        'decoder_layer_map',
        'copy_teacher_weights',
    ):
        assert never not in flags


def test_defaults_follow_the_teacher(flags):
    space = default_space(TEACHER, flags)
    assert space['kind'].choices == ('wide', 'narrow')
    assert (space['n_encoder_layers'].low, space['n_encoder_layers'].high) == (1, 2)
    assert (space['n_decoder_layers'].low, space['n_decoder_layers'].high) == (1, 6)
    assert space['embedding_size'].choices == (64, 128, 256)  # 256/4, 256/2, 256
    assert space['ffn_ratio'].choices == (4.0,)  # 1024 / 256
    assert space['n_heads'].choices == (4,)
    objectives = 'kl reverse_kl jsd skew_kl skew_reverse_kl taid'.split()
    assert space['pred_loss_type'].choices == tuple(objectives)
    assert space['task_loss_coeff'].choices == (1.0,)
    # Widths that the head count does not divide are left out: 24/4 = 6 and
    # 24/2 = 12 are not multiples of 8 heads.
    odd = TeacherShape(1, 1, 24, 96, 8, 100)
    assert default_space(odd, flags)['embedding_size'].choices == (24,)
    assert default_space(odd, flags)['n_decoder_layers'].choices == (1,)
    check_space(default_space(TEACHER, flags), TEACHER, flags)


def test_command_line_forms(kinds):
    spec = parse_cli_spec('n_decoder_layers=1:4', kinds)
    assert (spec.kind, spec.low, spec.high, spec.log, spec.optional) == (
        'int',
        1,
        4,
        False,
        False,
    )
    spec = parse_cli_spec('hidden-loss-coeff=0.1:10:log:optional', kinds)
    assert (spec.name, spec.low, spec.high, spec.log, spec.optional) == (
        'hidden_loss_coeff',
        0.1,
        10.0,
        True,
        True,
    )
    assert parse_cli_spec('pred_loss_type=kl, jsd', kinds).choices == ('kl', 'jsd')
    assert parse_cli_spec('pred_loss_coeff=1,4,4', kinds).choices == (1.0, 4.0)
    fixed = parse_cli_spec('n_heads=8', kinds)
    assert fixed.fixed and fixed.choices == (8,)
    assert parse_cli_spec('freeze_encoder=true,false', kinds).choices == (True, False)


@pytest.mark.parametrize(
    'text, message',
    [
        ('n_decoder_layers=2.5', 'not a valid int'),
        ('nope=1', "unknown parameter 'nope'"),
        ('pred_loss_coeff=', 'no value given'),
        ('pred_loss_coeff', 'write NAME=SPEC'),
        ('pred_loss_coeff=5:1', 'low 5.0 > high 1.0'),
        ('pred_loss_coeff=0:1:log', 'needs low > 0'),
        ('pred_loss_type=1:2', 'give choices, not a range'),
        ('pred_loss_coeff=1:2:cubic', r'LOW:HIGH\[:log\]'),
        ('pred_loss_type=kl,,jsd', 'an empty choice'),
    ],
)
def test_command_line_errors(kinds, text, message):
    with pytest.raises(DistillationError, match=message) as err:
        parse_cli_spec(text, kinds)
    assert '\n' not in str(err.value)


def test_space_files(tmp_path, kinds):
    yaml_file = tmp_path / 'space.yaml'
    yaml_file.write_text(
        'kind: narrow\n'
        'n_decoder_layers: {low: 1, high: 3}\n'
        'embedding_size: [64, 128]\n'
        'pred_loss_coeff: {low: 1, high: 64, log: true}\n'
        'hidden_loss_coeff: {low: 0.1, high: 1, optional: true}\n'
        'pred_loss_type: {choices: [kl, jsd]}\n'
    )
    specs = read_space_file(str(yaml_file), kinds)
    assert specs['kind'].choices == ('narrow',)
    assert (specs['n_decoder_layers'].low, specs['n_decoder_layers'].high) == (1, 3)
    assert specs['embedding_size'].choices == (64, 128)
    assert specs['pred_loss_coeff'].log and specs['pred_loss_coeff'].low == 1.0
    assert specs['hidden_loss_coeff'].optional
    assert specs['pred_loss_type'].choices == ('kl', 'jsd')
    json_file = tmp_path / 'space.json'
    json_file.write_text(json.dumps({'pred_loss_type': []}))
    with pytest.raises(DistillationError, match='pred_loss_type has no choices'):
        read_space_file(str(json_file), kinds)
    json_file.write_text('[1, 2]')
    with pytest.raises(DistillationError, match='expected a mapping'):
        read_space_file(str(json_file), kinds)
    json_file.write_text('{"kind": ')
    with pytest.raises(DistillationError, match='not valid JSON'):
        read_space_file(str(json_file), kinds)


def test_later_sources_win(flags, kinds):
    file_specs = {
        'n_decoder_layers': ParamSpec('n_decoder_layers', 'int', (2,)),
        'pred_loss_coeff': ParamSpec('pred_loss_coeff', 'float', (8.0,)),
    }
    cli = [
        parse_cli_spec('pred_loss_coeff=16', kinds),
        parse_cli_spec('ffn_size=512', kinds),
    ]
    space = build_space(TEACHER, flags, file_specs, cli)
    assert space['n_decoder_layers'].choices == (2,)
    assert space['pred_loss_coeff'].choices == (16.0,)
    assert space['ffn_size'].choices == (512,) and 'ffn_ratio' not in space
    assert space['kind'].choices == ('wide', 'narrow')  # untouched default


@pytest.mark.parametrize(
    'params, message',
    [
        (['pred_loss_type=kl,nope'], "'nope' is not one of --pred-loss-type's choices"),
        (['kind=wide', 'n_decoder_layers=1:8'], 'at most the teacher.s 6 decoder'),
        (['kind=tiny'], 'kind must be chosen from wide, narrow'),
        (
            ['kind=wide', 'embedding_size=64,128'],
            'embedding_size varies but kind is wide',
        ),
        (['embedding_size=48,96', 'n_heads=5'], 'embedding_size 48 is not a multiple'),
        (['n_heads=2,4'], 'n_heads may be 2 .teacher: 4. while self_attn_loss_coeff'),
        (['n_decoder_layers=0:2'], 'n_decoder_layers must be at least 1'),
        (['ffn_size=512', 'ffn_ratio=2'], 'either ffn_size or ffn_ratio'),
        (['embedding_size=32:64'], 'embedding_size must be a list of choices'),
        (['distill_temperature=0,1'], 'distill_temperature must be positive'),
        (['hidden_loss_coeff=-1,0'], 'hidden_loss_coeff must not be negative'),
        (
            [
                f'{n}=0'
                for n in (
                    'task_loss_coeff',
                    'pred_loss_coeff',
                    'hidden_loss_coeff',
                    'embedding_loss_coeff',
                    'self_attn_loss_coeff',
                    'enc_dec_attn_loss_coeff',
                )
            ],
            'every loss coefficient is 0',
        ),
    ],
)
def test_contradictory_spaces(flags, kinds, params, message):
    space = space_with(flags, kinds, *params)
    with pytest.raises(DistillationError, match=message) as err:
        check_space(space, TEACHER, flags)
    assert '\n' not in str(err.value)


def test_other_head_counts_are_fine_without_headwise_attention(flags, kinds):
    ok = ['n_heads=2,4', 'self_attn_loss_coeff=0', 'enc_dec_attn_loss_coeff=0']
    check_space(space_with(flags, kinds, *ok), TEACHER, flags)
    relation = ['n_heads=2,4', 'attn_loss_type=minilmv2']
    check_space(space_with(flags, kinds, *relation), TEACHER, flags)
    # narrow only: a wide student may keep all of the teacher's layers, a
    # narrow one may have more
    check_space(
        space_with(flags, kinds, 'kind=narrow', 'n_decoder_layers=1:8'), TEACHER, flags
    )


def test_sampling_builds_the_student(flags, kinds):
    space = space_with(
        flags,
        kinds,
        'hidden_loss_coeff=0.1:10:log:optional',
        'pred_loss_coeff=1:64:log',
    )
    narrow = sample_candidate(
        optuna.trial.FixedTrial(
            {
                'kind': 'narrow',
                'n_encoder_layers': 1,
                'n_decoder_layers': 3,
                'embedding_size': 128,
                'pred_loss_coeff': 8.0,
                'distill_temperature': 2.0,
                'pred_loss_type': 'jsd',
                'use_hidden_loss_coeff': False,
                'embedding_loss_coeff': 4.0,
                'self_attn_loss_coeff': 0.0,
                'enc_dec_attn_loss_coeff': 4.0,
            }
        ),
        space,
        TEACHER,
    )
    assert narrow.agent == 'anti_scaling.distillation:DistillNarrowTransformerAgent'
    # FFN: the teacher's ratio 1024 / 256 = 4 times the width 128
    assert narrow.shape == {
        'n_encoder_layers': 1,
        'n_decoder_layers': 3,
        'embedding_size': 128,
        'ffn_size': 512,
        'n_heads': 4,
    }
    assert narrow.options['hidden_loss_coeff'] == 0.0  # the switch said off
    assert narrow.options['task_loss_coeff'] == 1.0  # fixed: not sampled
    assert narrow.options['pred_loss_type'] == 'jsd'
    assert narrow.label() == 'narrow 1+3 d128 f512 h4'
    assert narrow.losses_label() == (
        'embedding=4, enc_dec_attn=4, pred=8, task=1, T=2, pred_loss_type=jsd'
    )
    wide_params = {
        'kind': 'wide',
        'n_encoder_layers': 2,
        'n_decoder_layers': 2,
        'pred_loss_coeff': 4.0,
        'distill_temperature': 1.0,
        'pred_loss_type': 'kl',
        'use_hidden_loss_coeff': True,
        'hidden_loss_coeff': 0.5,
        'embedding_loss_coeff': 0.0,
        'self_attn_loss_coeff': 0.0,
        'enc_dec_attn_loss_coeff': 0.0,
    }
    wide = sample_candidate(optuna.trial.FixedTrial(wide_params), space, TEACHER)
    assert wide.agent == 'anti_scaling.distillation:DistillTransformerAgent'
    assert wide.shape['embedding_size'] == 256 and wide.shape['ffn_size'] == 1024
    assert 'embedding_size' not in wide.options  # inherited from the teacher
    assert wide.options['hidden_loss_coeff'] == 0.5


def test_trial_command_parses_as_parlai_reads_it(flags, kinds, teacher_file, datapath):
    from parlai.scripts.train_model import setup_args

    teacher = TeacherShape(4, 4, 32, 64, 4, 11)
    space = build_space(teacher, flags, None, [])
    params = {
        'kind': 'narrow',
        'n_encoder_layers': 1,
        'n_decoder_layers': 2,
        'embedding_size': 16,
        'pred_loss_coeff': 16.0,
        'distill_temperature': 2.0,
        'pred_loss_type': 'reverse_kl',
        'hidden_loss_coeff': 0.25,
        'embedding_loss_coeff': 0.0,
        'self_attn_loss_coeff': 0.1,
        'enc_dec_attn_loss_coeff': 0.0,
    }
    student = sample_candidate(optuna.trial.FixedTrial(params), space, teacher)
    settings = SearchSettings(
        teacher=teacher_file,
        task='integration_tests:reverse',
        out='unused',
        trials=1,
        datapath=datapath,
        steps=30,
        valid_every=10,
        valid_examples=16,
    )
    argv = trial_argv(student, settings, ['-bs', '8', '--optimizer', 'adam'])
    opt = setup_args().parse_args(argv)
    assert opt['model'] == student.agent
    assert (opt['n_encoder_layers'], opt['n_decoder_layers']) == (1, 2)
    # FFN: the teacher's ratio 64 / 32 = 2 times the width 16
    assert (opt['embedding_size'], opt['ffn_size'], opt['n_heads']) == (16, 32, 4)
    assert opt['pred_loss_type'] == 'reverse_kl' and opt['distill_temperature'] == 2.0
    assert opt['hidden_loss_coeff'] == 0.25 and opt['self_attn_loss_coeff'] == 0.1
    assert opt['max_train_steps'] == 30 and opt['validation_every_n_steps'] == 10
    assert opt['validation_max_exs'] == 16 and opt['batchsize'] == 8
    assert opt['dict_file'] == teacher_file + '.dict'


def test_default_train_args_are_the_teachers():
    opt = {
        'batchsize': 32,
        'optimizer': 'adam',
        'learningrate': 0.002,
        'betas': [0.9, 0.98],
        'gradient_clip': 1.0,
        'lr_scheduler': 'invsqrt',
        'warmup_updates': 200,
        'weight_decay': None,
    }
    assert default_train_args(opt) == [
        '--batchsize',
        '32',
        '--optimizer',
        'adam',
        '--learningrate',
        '0.002',
        '--betas',
        '0.9,0.98',
        '--gradient-clip',
        '1',
        '--lr-scheduler',
        'invsqrt',
        '--warmup-updates',
        '200',
        '--seed',
        '0',
    ]
    assert default_train_args({'seed': 7})[-2:] == ['--seed', '7']


def test_reply_cost_by_hand():
    shape = {
        'n_encoder_layers': 1,
        'n_decoder_layers': 2,
        'embedding_size': 4,
        'ffn_size': 8,
        'n_heads': 1,
    }
    # encoder 1 * (4*16 + 2*4*8) * 3 = 384; encoder keys/values 2 * 2*16 * 3 = 192;
    # per reply token 2 * (6*16 + 2*4*8) + 4*10 = 360, times 2 tokens = 720
    assert reply_cost(shape, vocab=10, context_tokens=3, reply_tokens=2) == 1296.0


def test_pruning_rule_by_hand():
    refs = [
        Reference(0, cost=100.0, curve={10: 0.5, 20: 0.6}),
        Reference(1, cost=300.0, curve={10: 0.9}),
    ]
    rule = PruneRule(margin=0.05)
    # Only trial 0 is as cheap as 200: threshold 0.95 * 0.5 = 0.475.
    reason = prune_reason(10, 0.45, 200.0, refs, rule)
    assert reason == (
        'token_acc 0.45 at step 10 < 0.95 x 0.5 of trial 0 (as cheap or cheaper)'
    )
    assert prune_reason(10, 0.48, 200.0, refs, rule) is None
    # Trial 1 is better but dearer: it never prunes a cheaper trial.
    assert prune_reason(10, 0.45, 99.0, refs, rule) is None
    # At 300 both count and the best (trial 1, 0.9) is the reference.
    assert 'of trial 1' in prune_reason(10, 0.8, 300.0, refs, rule)
    assert prune_reason(15, 0.01, 200.0, refs, rule) is None  # no value at step 15
    assert prune_reason(10, 0.45, 200.0, refs, PruneRule(min_trials=2)) is None
    assert 'is nan' in prune_reason(10, math.nan, 200.0, refs, rule)
    ppl = PruneRule(metric='ppl', higher_is_better=False, margin=0.05)
    ppl_refs = [Reference(0, 100.0, {10: 10.0})]
    assert prune_reason(10, 10.4, 100.0, ppl_refs, ppl) is None  # <= 10.5
    assert prune_reason(10, 11.0, 100.0, ppl_refs, ppl) == (
        'ppl 11 at step 10 > 1.05 x 10 of trial 0 (as cheap or cheaper)'
    )


def test_front_outline_steps_down_from_the_slowest_point():
    from anti_scaling.search.pareto import staircase

    front = [(4.65, 0.216), (2.83, 0.2345), (6.84, 0.171)]
    assert staircase(front) == [
        (2.83, 0.2345),
        (2.83, 0.216),
        (4.65, 0.216),
        (4.65, 0.171),
        (6.84, 0.171),
    ]
    assert staircase([(3.0, 0.2)]) == [(3.0, 0.2)]


def test_a_finished_point_drawn_again_is_not_trained_again():
    import optuna
    from optuna.distributions import CategoricalDistribution
    from optuna.trial import TrialState, create_trial

    from anti_scaling.search.trial import TrialRunner, repeat_of

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(directions=['maximize', 'maximize'])
    dist = {'kind': CategoricalDistribution(['wide', 'narrow', 'other'])}
    metrics = {'token_acc': 0.2, 'speedup': 4.0}
    study.add_trial(
        create_trial(
            params={'kind': 'wide'},
            distributions=dist,
            values=[0.2, 4.0],
            user_attrs={'metrics': metrics, 'curve': [{'step': 1, 'ppl': 9.0}]},
        )
    )
    study.add_trial(
        create_trial(
            params={'kind': 'narrow'},
            distributions=dist,
            state=TrialState.PRUNED,
            user_attrs={'pruned': {'step': 100, 'reason': 'worse'}},
        )
    )
    assert repeat_of(study, {'kind': 'wide'}, 7).number == 0
    assert repeat_of(study, {'kind': 'wide'}, 0) is None  # not itself
    assert repeat_of(study, {'kind': 'other'}, 7) is None

    study.enqueue_trial({'kind': 'wide'})
    trial = study.ask(dist)
    assert TrialRunner.repeat(trial, repeat_of(study, trial.params, trial.number)) == (
        0.2,
        4.0,
    )
    attrs = study.trials[trial.number].user_attrs
    assert attrs['repeat_of'] == 0 and attrs['metrics'] == metrics
    assert attrs['curve'] == [{'step': 1, 'ppl': 9.0}]

    study.enqueue_trial({'kind': 'narrow'})
    trial = study.ask(dist)
    with pytest.raises(optuna.TrialPruned, match='repeats trial 1: worse'):
        TrialRunner.repeat(trial, repeat_of(study, trial.params, trial.number))
    attrs = study.trials[trial.number].user_attrs
    assert attrs['pruned'] == {'step': 100, 'reason': 'repeats trial 1: worse'}
