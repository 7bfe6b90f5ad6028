package p11

import (
	"fmt"
	"net/url"
	"strings"

	"hsmkms/hsm"
)

// TokenURI is what an RFC 7512 PKCS#11 URI selects: a token by any of the
// four CK_TOKEN_INFO attributes, and optionally the library by its
// CK_INFO attributes. Empty fields match anything. p11tool --list-tokens
// and pkcs11-tool -L print such URIs.
type TokenURI struct {
	Token        string // token=: CK_TOKEN_INFO.label
	Manufacturer string // manufacturer=: CK_TOKEN_INFO.manufacturerID
	Model        string // model=: CK_TOKEN_INFO.model
	Serial       string // serial=: CK_TOKEN_INFO.serialNumber

	LibraryManufacturer string // library-manufacturer=: CK_INFO.manufacturerID
	LibraryDescription  string // library-description=: CK_INFO.libraryDescription
	LibraryVersion      string // library-version=: CK_INFO.libraryVersion, "M" or "M.m"
}

// ParseTokenURI parses an RFC 7512 URI that names a token, e.g.
// "pkcs11:token=hsmkms;serial=8a1f..." or the whole line p11tool prints
// ("pkcs11:model=SoftHSM%20v2;manufacturer=SoftHSM%20project;serial=...;token=hsmkms").
// Values are percent-decoded. Object attributes (id, object, type) and
// slot attributes (slot-id, slot-description, slot-manufacturer: slot ids
// change when tokens are initialised) are refused, as are query attributes:
// pin-value and pin-source because the PIN is given by file or environment
// variable, module-name and module-path because the module is its own
// setting. At least one token attribute is required.
//
// Errors wrap hsm.ErrInvalidInput and never contain a PIN.
func ParseTokenURI(uri string) (TokenURI, error) {
	var u TokenURI
	bad := func(format string, a ...any) (TokenURI, error) {
		return TokenURI{}, fmt.Errorf("%w: token URI: %s", hsm.ErrInvalidInput, fmt.Sprintf(format, a...))
	}
	rest, ok := strings.CutPrefix(uri, "pkcs11:")
	if !ok {
		return bad("does not start with pkcs11:")
	}
	path, query, _ := strings.Cut(rest, "?")
	for _, q := range strings.Split(query, "&") {
		if q == "" {
			continue
		}
		k, _, _ := strings.Cut(q, "=")
		switch k {
		case "pin-value", "pin-source":
			return bad("%s is refused; give the PIN by file or environment variable", k)
		case "module-name", "module-path":
			return bad("%s is refused; the module is its own setting (pkcs11.module)", k)
		default:
			return bad("unknown query attribute %q", k)
		}
	}
	seen := map[string]bool{}
	for _, attr := range strings.Split(path, ";") {
		if attr == "" {
			continue
		}
		k, raw, ok := strings.Cut(attr, "=")
		if !ok {
			return bad("malformed attribute %q", attr)
		}
		v, err := url.PathUnescape(raw)
		if err != nil {
			return bad("attribute %s: %v", k, err)
		}
		if seen[k] {
			return bad("attribute %s given twice", k)
		}
		seen[k] = true
		switch k {
		case "token":
			u.Token = v
		case "manufacturer":
			u.Manufacturer = v
		case "model":
			u.Model = v
		case "serial":
			u.Serial = v
		case "library-manufacturer":
			u.LibraryManufacturer = v
		case "library-description":
			u.LibraryDescription = v
		case "library-version":
			u.LibraryVersion = v
		case "slot-id", "slot-description", "slot-manufacturer":
			return bad("attribute %s is not supported: slot ids change when tokens are initialised; select the token by token=, serial=, model= or manufacturer=", k)
		case "id", "object", "type":
			return bad("attribute %s names an object; give a URI of the token only", k)
		default:
			return bad("unknown attribute %q", k)
		}
	}
	if u.Token == "" && u.Manufacturer == "" && u.Model == "" && u.Serial == "" {
		return bad("no token attribute (token=, serial=, model= or manufacturer=)")
	}
	for _, f := range []struct{ name, v string }{{"token", u.Token}, {"manufacturer", u.Manufacturer}, {"model", u.Model}, {"serial", u.Serial}} {
		if max := tokenFieldLen(f.name); len(f.v) > max {
			return bad("%s is %d bytes, CK_TOKEN_INFO allows %d", f.name, len(f.v), max)
		}
	}
	return u, nil
}

// tokenFieldLen is the size of a blank-padded CK_TOKEN_INFO field.
func tokenFieldLen(name string) int {
	switch name {
	case "model", "serial":
		return 16
	}
	return 32
}

// String formats u back into a URI (attributes percent-encoded), the form
// used in messages.
func (u TokenURI) String() string {
	var parts []string
	add := func(k, v string) {
		if v != "" {
			parts = append(parts, k+"="+strings.ReplaceAll(url.PathEscape(v), ";", "%3B"))
		}
	}
	add("library-manufacturer", u.LibraryManufacturer)
	add("library-description", u.LibraryDescription)
	add("library-version", u.LibraryVersion)
	add("manufacturer", u.Manufacturer)
	add("model", u.Model)
	add("serial", u.Serial)
	add("token", u.Token)
	return "pkcs11:" + strings.Join(parts, ";")
}

// tokenMatches reports whether a token's info matches the token attributes
// of u (blank padding trimmed).
func (u TokenURI) tokenMatches(label, manufacturer, model, serial string) bool {
	eq := func(want, got string) bool { return want == "" || want == trimPad(got) }
	return eq(u.Token, label) && eq(u.Manufacturer, manufacturer) && eq(u.Model, model) && eq(u.Serial, serial)
}

// libraryMatches reports whether the module's CK_INFO matches u.
func (u TokenURI) libraryMatches(manufacturer, description string, major, minor byte) bool {
	eq := func(want, got string) bool { return want == "" || want == trimPad(got) }
	if !eq(u.LibraryManufacturer, manufacturer) || !eq(u.LibraryDescription, description) {
		return false
	}
	switch v := u.LibraryVersion; {
	case v == "":
		return true
	case strings.Contains(v, "."):
		return v == fmt.Sprintf("%d.%d", major, minor)
	default:
		return v == fmt.Sprintf("%d", major)
	}
}

func trimPad(s string) string { return strings.TrimRight(s, " \x00") }
