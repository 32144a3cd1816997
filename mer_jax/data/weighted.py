"""Comma-separated `ITEM[=WEIGHT]` config strings (data.mixture, data.pseudo_labels): items with positive weights."""


def parse_weighted(spec: str, key: str) -> list[tuple[str, float]]:
  """'a=2,b' -> [('a', 2.0), ('b', 1.0)]; ValueError naming `key` and the entry when a weight is not positive."""
  entries = []
  for item in filter(None, (part.strip() for part in spec.split(','))):
    location, _, weight = item.partition('=')
    try:
      value = float(weight) if weight else 1.0
    except ValueError:
      value = -1.0
    if not value > 0:
      raise ValueError(f'{key} entry {item!r}: weight {weight!r} is not a positive number')
    entries.append((location, value))
  return entries
