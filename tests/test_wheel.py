"""Emotion-wheel open-vocabulary scores: a small wheels folder in the MER2025 layout, hand-checked numbers, bad files."""

import os
import shutil
import subprocess
import sys

import numpy as np
import openpyxl
import pytest

from mer_jax.data.formats.common import FormatError
from mer_jax.eval import metrics, wheel
from mer_jax.eval.evaluate import build_report
from mer_jax.eval.report import summary_table

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Wheels 1-3: the A wheel; wheels 4-5: the B wheel, whose cells carry spaces as the real wheel5.xlsx does.
# Rows as in the real files: a level1/level2 cell is left empty below its first row.
WHEEL_A = [('Happy', 'Joyful', 'Cheerful'), (None, None, 'Content'), (None, 'Proud', 'Confident'),
           ('Sad', 'Lonely', 'Isolated'), (None, 'Hurt', 'Disappointed'),
           ('Mad', 'Angry', 'Furious')]
WHEEL_B = [(' Joy ', ' Content ', ' Cheerful '), (None, ' Proud ', ' Confident '),
           (' Sad ', ' Lonely ', ' Isolated '),
           (' Anger ', ' Furious ', ' Mad ')]
WHEEL_WORDS = ['happy', 'joyful', 'cheerful', 'content', 'proud', 'confident', 'sad', 'lonely', 'isolated', 'hurt',
               'disappointed', 'mad', 'angry', 'furious', 'joy', 'anger']
# (run, word) -> synonyms cell; every other cell of the eight synonym runs is empty.
SYNONYMS = {(1, 'happy'): 'glad, pleased', (2, 'happy'): "['glad', 'joyous']", (5, 'joy'): 'glad',
            (1, 'sad'): 'unhappy, blue', (3, 'angry'): 'irate', (4, 'mad'): 'irate, crazy',
            (1, 'disappointed'): 'let down'}
FORMATS = [('happy', 'happy,happier,happiness,happily'), ('glad', 'glad,gladly,gladness'),
           ('disappointed', 'disappointed,disappointment,disappointments'), ('sad', 'sad,sadness,sadder'),
           ('angry', 'angry,angrily,anger'), ('anger', 'anger,angers'), ('irate', 'irate'), ('mad', 'mad,madder'),
           ('furious', 'furious,furiously'), ('lonely', 'lonely,loneliness'), ('cheerful', 'cheerful,cheerfully'),
           ('content', 'content,contentment'), ('joy', 'joy,joys')]


def write_sheet(path: str, header: list[str], rows: list[tuple]) -> None:
  """One xlsx file with `header` and `rows` on its first sheet."""
  workbook = openpyxl.Workbook()
  sheet = workbook.active
  sheet.title = 'Sheet1'
  for row in [header, *rows]:
    sheet.append(list(row))
  workbook.save(path)


def synonym_rows() -> list[tuple]:
  """synonym.xlsx rows: each run lists every wheel word (run 2 capitalised, as the real file mixes), with synonyms."""
  rows = []
  for word in WHEEL_WORDS:
    cells = []
    for run in range(1, 9):
      cells += [word.capitalize() if run == 2 else word, SYNONYMS.get((run, word))]
    rows.append(tuple(cells))
  return rows


def write_wheels(folder: str) -> str:
  """A wheels folder in the MER2025 layout: wheel1..5.xlsx, synonym.xlsx, format.csv."""
  os.makedirs(folder, exist_ok=True)
  for number in range(1, 6):
    write_sheet(os.path.join(folder, f'wheel{number}.xlsx'), ['level1', 'level2', 'level3'],
                WHEEL_A if number <= 3 else WHEEL_B)
  header = [f'{kind}_run{run}' for run in range(1, 9) for kind in ('word', 'synonym')]
  write_sheet(os.path.join(folder, 'synonym.xlsx'), header, synonym_rows())
  with open(os.path.join(folder, 'format.csv'), 'w') as f:
    f.write('name,format\n' + ''.join(f'{name},"{forms}"\n' for name, forms in FORMATS))
  return folder


@pytest.fixture(scope='module')
def wheels_dir(tmp_path_factory) -> str:
  return write_wheels(str(tmp_path_factory.mktemp('emotion_wheel')))


@pytest.fixture(scope='module')
def wheels(wheels_dir) -> wheel.Wheels:
  return wheel.load(wheels_dir)


def test_groups_follow_synonyms_formats_and_each_wheel(wheels):
  # A synonym listed for two wheel words takes the alphabetically first one the wheel lists.
  assert [wheels.group('Glad ', f'wheel{n}', 'level1') for n in (1, 4)] == ['happy', 'joy']
  assert [wheels.group('irate', f'wheel{n}', 'level2') for n in (1, 4)] == ['angry', 'furious']
  # A word form reaches its base word through format.csv; 'anger' is a form of angry and a wheel-B word.
  assert wheels.group('disappointments', 'wheel2', 'level2') == 'hurt'
  assert [wheels.group('anger', f'wheel{n}', 'level1') for n in (3, 5)] == ['mad', 'anger']
  # At level2 a level1 word goes to its alphabetically first level2 word.
  assert wheels.group('happy', 'wheel1', 'level2') == 'joyful' and wheels.group('joy', 'wheel4', 'level2') == 'content'
  # Dropped: a word format.csv does not list (even a wheel word or a synonym), one a wheel does not list.
  assert wheels.group('xyzzy', 'wheel1', 'level1') == '' and wheels.group('crazy', 'wheel1', 'level1') == ''
  assert wheels.group('proud', 'wheel1', 'level1') == '' and wheels.group('happy', 'wheel5', 'level1') == ''


def test_set_scores_hand_checked(wheels):
  references = [['happy', 'sad'], ['irate'], ['xyzzy'], ['sad'], ['happy'], ['lonely']]
  predictions = [['Glad ', 'disappointments', 'xyzzy'], ['furious'], ['happy'], ['xyzzy'], ['cheerful', 'lonely'],
                 ['disappointed']]
  scores = wheel.set_scores(references, predictions, wheels)
  # Wheels A (x3): per sample (P, R), the xyzzy reference skipped:
  #   level1 (1,1) (1,1) - (0,0) (1/2,1) (1,1): P 0.7, R 0.8, F 56/75
  #   level2 (1,1) (1,1) - (0,0) (1/2,1) (0,0): P 0.5, R 0.6, F 6/11 (lonely vs hurt)
  # Wheels B (x2), happy dropped (sample 5 skipped), glad -> joy, disappointed dropped:
  #   both levels (0,0) (1,1) - (0,0) - (0,0): P = R = F = 1/4
  level1 = {'fscore': (3 * 56 / 75 + 2 / 4) / 5, 'precision': (3 * 0.7 + 2 / 4) / 5, 'recall': (3 * 0.8 + 2 / 4) / 5}
  level2 = {'fscore': (3 * 6 / 11 + 2 / 4) / 5, 'precision': (3 * 0.5 + 2 / 4) / 5, 'recall': (3 * 0.6 + 2 / 4) / 5}
  assert scores['level1'] == pytest.approx(level1) and scores['level2'] == pytest.approx(level2)
  assert scores['fscore'] == pytest.approx((level1['fscore'] + level2['fscore']) / 2)
  assert scores['level1']['fscore'] == pytest.approx(0.548)
  with pytest.raises(ValueError, match='2 references but 1 predictions'):
    wheel.set_scores([['sad'], ['sad']], [['sad']], wheels)


def test_hit_rate_hand_checked(wheels):
  # Level1. Wheels A: 3 hits of 3 (xyzzy skipped). Wheels B: happy skipped, irate hit, disappointed dropped: 1 of 2.
  rate = wheel.hit_rate(['happy', 'irate', 'xyzzy', 'lonely'], [['glad'], ['furious'], ['happy'], ['disappointed']],
                        wheels)
  assert rate == pytest.approx((3 * 1 + 2 * 0.5) / 5)


def test_score_open_vocabulary_names_the_rule_and_drops_unlisted_words(wheels):
  # The grouping file counts an unlisted word as its own group (a hit); the wheels drop it (no sample left: 0).
  grouped = metrics.score_open_vocabulary([['xyzzy']], [['xyzzy']], None)
  assert grouped == {'rule': 'grouping file', 'precision': 1.0, 'recall': 1.0, 'f1': 1.0, 'hit_rate': 1.0}
  by_wheel = metrics.score_open_vocabulary([['xyzzy']], [['xyzzy']], wheels)
  assert by_wheel['rule'] == 'emotion-wheel (5 wheels)' and by_wheel['fscore'] == 0.0 and by_wheel['hit_rate'] == 0.0
  assert metrics.score_open_vocabulary([['happy', 'sad']], [['glad']], wheels)['hit_rate'] is None


def test_report_says_which_rule_scored_open_vocabulary(wheels):
  labels = ['neutral', 'angry', 'happy', 'sad']
  predictions = {
      'true': np.array([2, 3, 1]), 'scored': np.array([2, 3, 1]), 'generated': np.array([2, 3, 3]),
      'valence_true': np.zeros(3), 'valence_pred': np.zeros(3), 'names': np.array(['c1', 'c2', 'c3']),
      'texts': np.array(['glad', 'sadness', 'sad']), 'label_texts': np.array(['glad', 'sadness', 'sad']),
      'explanations': np.array(['', '', ''])}
  default = build_report(predictions, labels, 0.0, 'test')
  assert default['open_vocabulary']['rule'] == 'grouping file'
  assert '| hit rate | rule |' in summary_table(default) and '| grouping file |' in summary_table(default)
  report = build_report(predictions, labels, 0.0, 'test', wheels)
  scores = report['open_vocabulary']
  # Wheels A: happy/glad hit, sad/sadness hit, angry/sad miss. Wheels B: happy dropped, sad hit, angry dropped.
  assert scores['rule'] == 'emotion-wheel (5 wheels)'
  assert scores['hit_rate'] == pytest.approx((3 * 2 / 3 + 2 * 1) / 5)
  table = summary_table(report)
  assert '| level1 precision | level1 recall | level1 F | level2 precision |' in table
  assert table.rstrip().endswith(f"| {scores['fscore']:.4f} | {scores['hit_rate']:.4f} | emotion-wheel (5 wheels) |")


def copy_wheels(source: str, destination: str) -> str:
  """A fresh copy of a wheels folder to break."""
  shutil.copytree(source, destination)
  return destination


def test_missing_file_is_named(wheels_dir, tmp_path):
  folder = copy_wheels(wheels_dir, str(tmp_path / 'wheels'))
  os.remove(os.path.join(folder, 'wheel3.xlsx'))
  with pytest.raises(FormatError, match=r'missing wheel3\.xlsx; an emotion-wheel folder holds wheel1\.xlsx'):
    wheel.load(folder)
  with pytest.raises(FormatError, match='does not exist'):
    wheel.load(str(tmp_path / 'nowhere'))


def test_bad_layouts_are_named(wheels_dir, tmp_path):
  cases = {
      'header': ('wheel2.xlsx', ['Level 1', 'level2', 'level3'], WHEEL_A,
                 r"wheel2\.xlsx: header row lacks column\(s\) \['level1'\]"),
      'first row': ('wheel4.xlsx', ['level1', 'level2', 'level3'], [(None, 'Calm', 'Relaxed')],
                    r'wheel4\.xlsx, row 2: empty level1 and no row above'),
      'number': ('wheel5.xlsx', ['level1', 'level2', 'level3'], [('Sad', 'Lonely', 3)],
                 r'wheel5\.xlsx, row 2, column level3: 3 is not text'),
      'synonym word': ('synonym.xlsx', [f'{k}_run{r}' for r in range(1, 9) for k in ('word', 'synonym')],
                       [('happy', None) * 7 + ('bored', None)],
                       r"synonym\.xlsx, row 2, column word_run8: 'bored' is no word of wheel1"),
  }
  for name, (file, header, rows, message) in cases.items():
    folder = copy_wheels(wheels_dir, str(tmp_path / name))
    write_sheet(os.path.join(folder, file), header, rows)
    with pytest.raises(FormatError, match=message):
      wheel.load(folder)
  folder = copy_wheels(wheels_dir, str(tmp_path / 'format'))
  with open(os.path.join(folder, 'format.csv'), 'a') as f:
    f.write('bored,"bored,boredom"\n')
  with pytest.raises(FormatError, match=rf"format\.csv, line {len(FORMATS) + 2}: name 'bored' is neither"):
    wheel.load(folder)
  folder = copy_wheels(wheels_dir, str(tmp_path / 'not xlsx'))
  with open(os.path.join(folder, 'wheel1.xlsx'), 'w') as f:
    f.write('level1,level2,level3\n')
  with pytest.raises(FormatError, match=r'wheel1\.xlsx: not a readable xlsx workbook'):
    wheel.load(folder)


def test_evaluate_refuses_a_bad_wheels_folder_before_loading_the_run(tmp_path):
  result = subprocess.run([sys.executable, '-c', 'from mer_jax.main import run; run()', 'evaluate', '--workdir',
                           str(tmp_path), '--wheels', str(tmp_path)], cwd=ROOT, capture_output=True, text=True,
                          timeout=300)
  assert result.returncode != 0 and 'missing wheel1.xlsx' in result.stderr
  assert 'config.json not found' not in result.stderr
