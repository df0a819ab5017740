"""Prompts for training the test tokenizer and for tokenizer parity (>= 300 strings).

Written for these tests: music descriptions, plus the hard cases of byte-level BPE — unicode,
emoji, accents, CJK, runs of spaces, tabs and newlines, punctuation, numbers, the empty string
and one very long prompt.
"""

GENRES = ["techno", "jazz", "lo-fi hip hop", "ambient", "drum and bass", "baroque", "bossa nova",
          "heavy metal", "synthwave", "reggae", "flamenco", "gospel", "dubstep", "bluegrass",
          "k-pop", "afrobeat", "trance", "shoegaze", "grunge", "orchestral"]
MOODS = ["calm", "energetic", "melancholic", "uplifting", "dark", "dreamy", "aggressive",
         "playful", "nostalgic", "epic", "tense", "warm", "cold", "groovy", "sparse"]
INSTRUMENTS = ["piano", "electric guitar", "808 drums", "violin", "saxophone", "synth pads",
               "upright bass", "choir", "flute", "tabla", "accordion", "harp", "trumpet",
               "marimba", "cello"]
TEMPOS = ["60 bpm", "90 BPM", "120 bpm", "128bpm", "140 BPM", "174 bpm", "slow tempo",
          "fast tempo", "half-time", "double time"]

SPECIAL = [
    "", " ", "  ", "\t", "\n", "\r\n", "   leading spaces", "trailing spaces   ",
    "tabs\tbetween\twords", "new\nlines\n\nand\n\n\nmore", "mixed \t \n whitespace \t\n",
    "runs      of      spaces", "Café con leche — ñandú, über, façade, naïve, résumé",
    "Ελληνική μουσική με μπουζούκι", "русская народная песня с балалайкой",
    "日本の伝統音楽、尺八と琴", "中文流行音乐，钢琴和弦乐", "한국 전통 음악 가야금",
    "موسيقى عربية مع العود", "שיר עברי עם גיטרה", "हिंदी संगीत सितार के साथ",
    "🎵🎶 party music 🎉🥳", "🔥🔥🔥 hard drop 💥", "emoji only 😀😃😄😁😆😅😂🤣",
    "👨‍👩‍👧‍👦 family zwj sequence", "flags 🇺🇸🇯🇵🇧🇷", "skin tones 👍🏽👍🏿",
    "!!!???...", "a-b_c.d,e;f:g", "(parentheses) [brackets] {braces} <angles>",
    "\"double\" 'single' `backtick`", "#hashtag @mention $dollar %percent ^caret &amp *star",
    "3.14159 2,718 1e-10 -42 +7 0x1F 1/2 ¾ ½", "year 1999, track 07, take #3",
    "<s> looks like a special token </s>", "<pad><mask><unk>", "ALL CAPS SHOUTING MUSIC",
    "mIxEd CaSe TeXt", "don't won't can't it's we're", "zero\u200bwidth\u200bspace",
    "combining e\u0301 a\u0300 o\u0302", "\u00a0non-breaking\u00a0space", "tab\tand\u3000ideographic space",
    "ｆｕｌｌｗｉｄｔｈ ｔｅｘｔ", "math ∑ ∫ √ ∞ ≈ ≠ ≤ ≥", "arrows → ← ↑ ↓ ⇒", "box ┌─┐│└┘",
    "quotes “curly” ‘single’ «guillemets»", "ellipsis… dash – em — minus −",
]


def prompts() -> list[str]:
    """The parity corpus: deterministic, > 300 strings, ending with a 5,000-character prompt."""
    out = list(SPECIAL)
    for i in range(260):
        g, m = GENRES[i % len(GENRES)], MOODS[(i * 7) % len(MOODS)]
        inst, tempo = INSTRUMENTS[(i * 11) % len(INSTRUMENTS)], TEMPOS[(i * 3) % len(TEMPOS)]
        style = i % 4
        if style == 0:
            out.append(f"{m} {g} with {inst} at {tempo}")
        elif style == 1:
            out.append(f"A {m} {g} track featuring {inst}, {tempo}.")
        elif style == 2:
            out.append(f"{g.upper()}  —  {inst}\t{tempo}\n{m}")
        else:
            out.append(f"{m.capitalize()}, {g}; {inst} & {INSTRUMENTS[(i + 5) % len(INSTRUMENTS)]} ({tempo})!")
    long_prompt = " ".join(f"{MOODS[i % 15]} {GENRES[i % 20]} {INSTRUMENTS[i % 15]}" for i in range(400))
    out.append(long_prompt[:5000])
    return out
