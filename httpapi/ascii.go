package httpapi

// Word-at-a-time scans of the long strings of the hot path (base64
// plaintexts and ciphertexts): they only say whether a string is plain, and
// the callers take their exact byte-by-byte path otherwise.

const (
	lsb = 0x0101010101010101
	msb = 0x8080808080808080
)

// hasLess reports whether any byte of w is below n (n <= 128).
func hasLess(w, n uint64) bool { return (w-lsb*n)&^w&msb != 0 }

// hasByte reports whether any byte of w equals c.
func hasByte(w, c uint64) bool {
	x := w ^ (lsb * c)
	return (x-lsb)&^x&msb != 0
}

func load64(s string, i int) uint64 {
	return uint64(s[i]) | uint64(s[i+1])<<8 | uint64(s[i+2])<<16 | uint64(s[i+3])<<24 |
		uint64(s[i+4])<<32 | uint64(s[i+5])<<40 | uint64(s[i+6])<<48 | uint64(s[i+7])<<56
}

// jsonPlain reports whether encoding/json copies s into a JSON string as
// is: printable ASCII other than " \ < > &.
func jsonPlain(s string) bool {
	i := 0
	for ; i+8 <= len(s); i += 8 {
		w := load64(s, i)
		if w&msb != 0 || hasLess(w, 0x20) || hasByte(w, 0x7f) || hasByte(w, '"') || hasByte(w, '\\') ||
			hasByte(w, '<') || hasByte(w, '>') || hasByte(w, '&') {
			return false
		}
	}
	for ; i < len(s); i++ {
		if c := s[i]; c < 0x20 || c >= 0x7f || c == '"' || c == '\\' || c == '<' || c == '>' || c == '&' {
			return false
		}
	}
	return true
}

// asciiNoControl reports whether b is ASCII without control characters
// below 0x20.
func asciiNoControl(b []byte) bool {
	i := 0
	for ; i+8 <= len(b); i += 8 {
		w := uint64(b[i]) | uint64(b[i+1])<<8 | uint64(b[i+2])<<16 | uint64(b[i+3])<<24 |
			uint64(b[i+4])<<32 | uint64(b[i+5])<<40 | uint64(b[i+6])<<48 | uint64(b[i+7])<<56
		if w&msb != 0 || hasLess(w, 0x20) {
			return false
		}
	}
	for ; i < len(b); i++ {
		if c := b[i]; c < 0x20 || c >= 0x80 {
			return false
		}
	}
	return true
}
