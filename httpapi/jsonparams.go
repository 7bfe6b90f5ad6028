package httpapi

import (
	"bytes"
	"encoding/json"
	"reflect"
	"sync"
	"unicode/utf8"

	"github.com/go-json-experiment/json/jsontext"
)

// decodeJSONParams decodes a JSON object body (TC3 POST) into dst, a
// pointer to a struct whose fields carry json tags. An empty body is an
// empty object. It refuses, with a *paramError:
//   - a body that is not one JSON object (InvalidParameter), or has another
//     JSON value after it;
//   - a name given twice (InvalidParameter) or unknown to dst, compared
//     case-sensitively (UnknownParameter);
//   - a value of the wrong type for its field (InvalidParameter).
//
// The object is read with jsontext (github.com/go-json-experiment/json, the
// proposed encoding/json/v2's tokenizer): it parses in place, without
// encoding/json's Token allocations, and names are unescaped before they
// are compared. Duplicate names are checked here (to name the parameter in
// the message); strings go to string fields straight from their token,
// other values through encoding/json, so a value is accepted exactly as
// encoding/json accepts it (invalid UTF-8 becomes U+FFFD).
func decodeJSONParams(body []byte, dst any) error {
	body = bytes.TrimSpace(body)
	if len(body) == 0 {
		return nil
	}
	jd := jsonDecoders.Get().(*jsonDecoder)
	defer jd.release()
	jd.r.Reset(body)
	jd.dec.Reset(&jd.r, jsontext.AllowDuplicateNames(true), jsontext.AllowInvalidUTF8(true))
	dec := &jd.dec
	if tok, err := dec.ReadToken(); err != nil || tok.Kind() != '{' {
		return paramErrorf("InvalidParameter", "the request body must be a JSON object")
	}
	v := reflect.ValueOf(dst).Elem()
	fields := fieldsOf(v.Type())
	var seen uint64 // by fieldInfo.ordinal
	for dec.PeekKind() != '}' {
		raw, err := dec.ReadValue() // the member's name, quoted; valid until the next read
		if err != nil || raw.Kind() != '"' {
			return paramErrorf("InvalidParameter", "malformed JSON body")
		}
		fi, known := lookupName(fields, raw)
		if known && seen&(1<<fi.ordinal) != 0 {
			return paramErrorf("InvalidParameter", "parameter %s is given twice", truncate(unquoteName(raw), 64))
		}
		if !known {
			name := unquoteName(raw) // before the next read reuses raw's bytes
			if _, err := dec.ReadValue(); err != nil {
				return paramErrorf("InvalidParameter", "malformed JSON body")
			}
			return paramErrorf("UnknownParameter", "the parameter %s is not recognized", truncate(name, 64))
		}
		seen |= 1 << fi.ordinal
		if err := decodeJSONField(dec, v.FieldByIndex(fi.index), fi); err != nil {
			return err
		}
	}
	if _, err := dec.ReadToken(); err != nil { // the closing brace
		return paramErrorf("InvalidParameter", "malformed JSON body")
	}
	if dec.PeekKind() != 0 {
		return paramErrorf("InvalidParameter", "data after the JSON object")
	}
	return nil
}

// jsonDecoder is a reusable jsontext.Decoder and its reader: a decoder's
// buffers are a large share of the cost of decoding a small body.
type jsonDecoder struct {
	r   bytes.Reader
	dec jsontext.Decoder
}

var jsonDecoders = sync.Pool{New: func() any { return new(jsonDecoder) }}

// release drops the references to the body and puts jd back.
func (jd *jsonDecoder) release() {
	jd.r.Reset(nil)
	jd.dec.Reset(&jd.r)
	jsonDecoders.Put(jd)
}

// lookupName finds the field of a member's name, raw as sent (quoted). A
// plain ASCII name is looked up without being copied.
func lookupName(fields map[string]fieldInfo, raw jsontext.Value) (fieldInfo, bool) {
	inner := raw[1 : len(raw)-1]
	for _, c := range inner {
		if c == '\\' || c >= utf8.RuneSelf {
			fi, ok := fields[unquoteName(raw)]
			return fi, ok
		}
	}
	fi, ok := fields[string(inner)] // no allocation for a map lookup
	return fi, ok
}

// unquoteName returns a member's name, raw as sent (a valid JSON string),
// unquoted as encoding/json does (invalid UTF-8 becomes U+FFFD).
func unquoteName(raw jsontext.Value) string {
	var n string
	_ = json.Unmarshal(raw, &n)
	return n
}

// decodeJSONField decodes the next value of dec into f, the field fi.
// null leaves f as it is.
func decodeJSONField(dec *jsontext.Decoder, f reflect.Value, fi fieldInfo) error {
	wrongType := func() error {
		return paramErrorf("InvalidParameter", "parameter %s has the wrong type (want %s)", fi.name, typeName(fi.typ))
	}
	switch dec.PeekKind() {
	case 'n':
		if _, err := dec.ReadToken(); err != nil {
			return paramErrorf("InvalidParameter", "malformed JSON body")
		}
		return nil
	case '"':
		if k := f.Kind(); k == reflect.String || k == reflect.Pointer && f.Type().Elem().Kind() == reflect.String {
			tok, err := dec.ReadToken()
			if err != nil {
				return paramErrorf("InvalidParameter", "malformed JSON body")
			}
			str := tok.String()
			if k == reflect.String {
				f.SetString(str)
			} else {
				f.Set(reflect.ValueOf(&str))
			}
			return nil
		}
	}
	raw, err := dec.ReadValue()
	if err != nil {
		return paramErrorf("InvalidParameter", "malformed JSON body")
	}
	if err := json.Unmarshal(raw, f.Addr().Interface()); err != nil {
		return wrongType()
	}
	return nil
}
