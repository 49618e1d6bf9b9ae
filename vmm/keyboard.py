"""Host keystrokes as a PS/2 keyboard's scan codes: terminal bytes to key strokes (US layout),
keys to scan-code set 2 (set 1 through the i8042's translation), as QEMU's ps2.c produces them."""

from __future__ import annotations

from typing import Optional

# Scan-code set 2 make codes (QEMU's qemu_input_map_qcode_to_atset2), keyed by QEMU's key names
# (those of its `sendkey`); 0xE0xx is an extended key, sent with its 0xE0 prefix.
SET2 = {
    "esc": 0x76, "1": 0x16, "2": 0x1E, "3": 0x26, "4": 0x25, "5": 0x2E, "6": 0x36, "7": 0x3D,
    "8": 0x3E, "9": 0x46, "0": 0x45, "minus": 0x4E, "equal": 0x55, "backspace": 0x66, "tab": 0x0D,
    "q": 0x15, "w": 0x1D, "e": 0x24, "r": 0x2D, "t": 0x2C, "y": 0x35, "u": 0x3C, "i": 0x43,
    "o": 0x44, "p": 0x4D, "bracket_left": 0x54, "bracket_right": 0x5B, "ret": 0x5A, "ctrl": 0x14,
    "a": 0x1C, "s": 0x1B, "d": 0x23, "f": 0x2B, "g": 0x34, "h": 0x33, "j": 0x3B, "k": 0x42,
    "l": 0x4B, "semicolon": 0x4C, "apostrophe": 0x52, "grave_accent": 0x0E, "shift": 0x12,
    "backslash": 0x5D, "z": 0x1A, "x": 0x22, "c": 0x21, "v": 0x2A, "b": 0x32, "n": 0x31,
    "m": 0x3A, "comma": 0x41, "dot": 0x49, "slash": 0x4A, "shift_r": 0x59, "alt": 0x11,
    "spc": 0x29, "caps_lock": 0x58, "f1": 0x05, "f2": 0x06, "f3": 0x04, "f4": 0x0C, "f5": 0x03,
    "f6": 0x0B, "f7": 0x83, "f8": 0x0A, "f9": 0x01, "f10": 0x09, "f11": 0x78, "f12": 0x07,
    "up": 0xE075, "down": 0xE072, "left": 0xE06B, "right": 0xE074, "home": 0xE06C, "end": 0xE069,
    "pgup": 0xE07D, "pgdn": 0xE07A, "insert": 0xE070, "delete": 0xE071,
}

# The i8042's translation of set 2 to set 1 (QEMU's hw/input/ps2.c translate_table): a byte
# after 0xF0 comes out with bit 7 set, the 0xF0 itself is swallowed.
TRANSLATE = bytes.fromhex(
    "ff43413f3d3b3c58644442403e0f295965382a701d10025a66712c1f1e11035b"
    "672e2d201205045c68392f211413065d693130232215075e6a7232241608095f"
    "6b332517180b0a606c34352627190c616d7328741a0d626e3a361c1b752b6376"
    "55567778797a0e7b7c4f7d4b477e7f6f5253504c4d480145574e514a37494654"
    "8081824154858687"
    ) + bytes(range(0x88, 0x100))

# US layout: the keys of the printable ASCII characters, with shift where the character needs it.
_UNSHIFTED = {"-": "minus", "=": "equal", "[": "bracket_left", "]": "bracket_right", ";": "semicolon",
              "'": "apostrophe", "`": "grave_accent", "\\": "backslash", ",": "comma", ".": "dot",
              "/": "slash", " ": "spc"}
_SHIFTED = {"!": "1", "@": "2", "#": "3", "$": "4", "%": "5", "^": "6", "&": "7", "*": "8", "(": "9",
            ")": "0", "_": "minus", "+": "equal", "{": "bracket_left", "}": "bracket_right",
            ":": "semicolon", '"': "apostrophe", "~": "grave_accent", "|": "backslash", "<": "comma",
            ">": "dot", "?": "slash"}
# Control bytes a terminal sends for keys of their own (before Ctrl-letter takes the rest).
_CONTROL_KEYS = {0x08: "backspace", 0x09: "tab", 0x0A: "ret", 0x0D: "ret", 0x1B: "esc", 0x7F: "backspace"}
_CONTROL_OTHERS = {0x00: ("ctrl", "spc"), 0x1C: ("ctrl", "backslash"), 0x1D: ("ctrl", "bracket_right"),
                   0x1E: ("ctrl", "shift", "6"), 0x1F: ("ctrl", "shift", "minus")}
# Escape sequences (xterm, VT100; cursor keys in normal and application mode).
_SEQUENCES = {b"[A": "up", b"[B": "down", b"[C": "right", b"[D": "left", b"OA": "up", b"OB": "down",
              b"OC": "right", b"OD": "left", b"[H": "home", b"[F": "end", b"OH": "home", b"OF": "end",
              b"[1~": "home", b"[2~": "insert", b"[3~": "delete", b"[4~": "end", b"[5~": "pgup",
              b"[6~": "pgdn", b"OP": "f1", b"OQ": "f2", b"OR": "f3", b"OS": "f4", b"[15~": "f5",
              b"[17~": "f6", b"[18~": "f7", b"[19~": "f8", b"[20~": "f9", b"[21~": "f10",
              b"[23~": "f11", b"[24~": "f12"}

Stroke = tuple        # the keys held together, modifiers first: ("shift", "a")


def stroke_for_character(byte: int) -> Optional[Stroke]:
    """The keys that type one byte on a US keyboard, or None for bytes no key types (those
    above 0x7F)."""
    if byte in _CONTROL_KEYS:
        return (_CONTROL_KEYS[byte],)
    if byte in _CONTROL_OTHERS:
        return _CONTROL_OTHERS[byte]
    if 0x01 <= byte <= 0x1A:
        return ("ctrl", chr(byte + 0x60))
    if byte >= 0x7F:
        return None
    char = chr(byte)
    if "a" <= char <= "z" or "0" <= char <= "9":
        return (char,)
    if "A" <= char <= "Z":
        return ("shift", char.lower())
    if char in _UNSHIFTED:
        return (_UNSHIFTED[char],)
    return ("shift", _SHIFTED[char])


def key_events(stroke: Stroke) -> list[tuple[str, bool]]:
    """A stroke as key events: every key pressed in order, then released in reverse, as QEMU's
    sendkey does (Ctrl-C: ctrl down, c down, c up, ctrl up)."""
    return [(key, True) for key in stroke] + [(key, False) for key in reversed(stroke)]


class StrokeDecoder:
    """Terminal bytes to strokes. An escape sequence is one key; an ESC that nothing follows in
    the bytes so far is the Escape key (a terminal writes a sequence at once); an unknown
    sequence is dropped whole, and so are bytes above 0x7F."""

    def __init__(self) -> None:
        self._pending = bytearray()

    def feed(self, data: bytes) -> list[Stroke]:
        self._pending += data
        strokes, buffer, at = [], self._pending, 0
        while at < len(buffer):
            byte = buffer[at]
            if byte == 0x1B and at + 1 < len(buffer) and buffer[at + 1] in b"[O":
                end = _sequence_end(buffer, at + 1)
                if end is None:
                    break                            # the rest of the sequence is still coming
                key = _SEQUENCES.get(bytes(buffer[at + 1:end]))
                if key is not None:
                    strokes.append((key,))
                at = end
                continue
            stroke = stroke_for_character(byte)
            if stroke is not None:
                strokes.append(stroke)
            at += 1
        del buffer[:at]
        return strokes


def _sequence_end(buffer: bytearray, at: int) -> Optional[int]:
    """The end of the CSI (`[` parameters final) or SS3 (`O` final) sequence starting at `at`."""
    if buffer[at] == ord("O"):
        return at + 2 if at + 1 < len(buffer) else None
    for index in range(at + 1, len(buffer)):
        if 0x40 <= buffer[index] <= 0x7E:
            return index + 1
    return None


def scan_codes(key: str, down: bool, scancode_set: int) -> list[int]:
    """The bytes the keyboard sends for one key event in its scan-code set, before the
    controller's translation: set 2 (make; 0xF0 then the code to break), set 1 (QEMU's atset1:
    set 2 translated, break with bit 7). Set 3 is not modelled: the keyboard sends set 2."""
    code = SET2[key]
    prefix = [0xE0] if code > 0xFF else []
    code &= 0xFF
    if scancode_set == 1:
        return prefix + [TRANSLATE[code] | (0 if down else 0x80)]
    return prefix + ([] if down else [0xF0]) + [code]


def translate(codes: list[int], state: dict) -> list[int]:
    """The i8042's translation to set 1 (QEMU's ps2_put_keycode with translate on): 0xF0 sets
    the break bit of the next byte; `state` keeps that bit between calls."""
    out = []
    for code in codes:
        if code == 0xF0:
            state["need_high_bit"] = True
        elif state.get("need_high_bit"):
            out.append(TRANSLATE[code] | 0x80)
            state["need_high_bit"] = False
        else:
            out.append(TRANSLATE[code])
    return out
