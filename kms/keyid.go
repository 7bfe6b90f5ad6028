package kms

import "github.com/google/uuid"

// parseKeyID parses a key id in canonical form: a UUID written as 36 lower
// case characters, 8-4-4-4-12. Any other spelling (upper case, braces,
// "urn:uuid:" prefix, no dashes) is refused. It does not allocate.
func parseKeyID(s string) (uuid.UUID, bool) {
	var u uuid.UUID
	if len(s) != 36 || s[8] != '-' || s[13] != '-' || s[18] != '-' || s[23] != '-' {
		return u, false
	}
	j := 0
	for i := 0; i < 36; i += 2 {
		if i == 8 || i == 13 || i == 18 || i == 23 {
			i++
		}
		hi, ok1 := lowerHex(s[i])
		lo, ok2 := lowerHex(s[i+1])
		if !ok1 || !ok2 {
			return uuid.UUID{}, false
		}
		u[j] = hi<<4 | lo
		j++
	}
	return u, true
}

func lowerHex(c byte) (byte, bool) {
	switch {
	case '0' <= c && c <= '9':
		return c - '0', true
	case 'a' <= c && c <= 'f':
		return c - 'a' + 10, true
	}
	return 0, false
}

// validKeyID reports whether s is a key id in canonical form.
func validKeyID(s string) bool {
	_, ok := parseKeyID(s)
	return ok
}
