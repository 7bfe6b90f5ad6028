package httpapi

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"reflect"
	"sort"
	"strconv"
	"strings"
	"sync"
	"unicode/utf8"
	"unsafe"
)

// This file decodes API 3.0 business parameters into request structs,
// strictly and identically from both shapes Tencent serves: a JSON object
// (TC3 POST) and flattened form/query parameters (signature v1, TC3 GET),
// where arrays and structs are flattened as KeyIds.0, Tags.0.TagKey.
//
// Names are case-sensitive (encoding/json alone would match "keyid" to
// KeyId), each parameter may appear once, and a name the action does not
// know is an error.

// paramError is a parameter problem with its API 3.0 error code.
type paramError struct {
	code    string // MissingParameter, UnknownParameter, InvalidParameter, InvalidParameterValue...
	message string
}

func (e *paramError) Error() string { return e.code + ": " + e.message }

func paramErrorf(code, format string, args ...any) *paramError {
	return &paramError{code: code, message: fmt.Sprintf(format, args...)}
}

// fieldInfo describes one parameter of a request struct.
type fieldInfo struct {
	index []int
	typ   reflect.Type
}

var fieldCache sync.Map // reflect.Type -> map[string]fieldInfo

// fieldsOf maps the JSON names of a struct's fields to the fields.
func fieldsOf(t reflect.Type) map[string]fieldInfo {
	if m, ok := fieldCache.Load(t); ok {
		return m.(map[string]fieldInfo)
	}
	m := make(map[string]fieldInfo, t.NumField())
	for i := 0; i < t.NumField(); i++ {
		f := t.Field(i)
		name, _, _ := strings.Cut(f.Tag.Get("json"), ",")
		if name == "" || name == "-" || !f.IsExported() {
			continue
		}
		m[name] = fieldInfo{index: f.Index, typ: f.Type}
	}
	fieldCache.Store(t, m)
	return m
}

// decodeJSONParams decodes a JSON object body into dst (a pointer to a
// struct). An empty body is an empty object. The strings it stores may
// share body's bytes: body must not be modified afterwards.
//
// The common shape (an object whose values are plain strings or null, into
// string or *string fields) takes decodeJSONFast, which allocates only the
// strings it stores; anything else, including every error, is decoded by
// decodeJSONParamsSlow, the reference implementation, so both give the same
// result and the same error for every input (FuzzDecodeJSONParamsFast).
func decodeJSONParams(body []byte, dst any) error {
	if decodeJSONFast(body, dst) {
		return nil
	}
	return decodeJSONParamsSlow(body, dst)
}

// maxFastParams bounds the members decodeJSONFast handles.
const maxFastParams = 8

// decodeJSONFast decodes body into dst and reports true if body is, after
// optional white space, an object of at most maxFastParams members with
// distinct known names without escapes whose values are null or strings
// (valid UTF-8, no \u escapes), each into a string or *string field,
// followed only by white space. Otherwise it reports false and leaves dst untouched.
//
// Strings without escapes are stored without a copy: they share body's
// bytes, so body must not be modified once decodeJSONFast has returned
// (request bodies are read into a fresh buffer per request and never
// written again).
func decodeJSONFast(body []byte, dst any) bool {
	rv := reflect.ValueOf(dst)
	if rv.Kind() != reflect.Pointer || rv.IsNil() || rv.Elem().Kind() != reflect.Struct {
		return false
	}
	v := rv.Elem()
	fields := fieldsOf(v.Type())
	type member struct {
		fi      fieldInfo
		name    []byte
		value   []byte // nil for null
		escaped bool
	}
	var ms [maxFastParams]member
	n := 0
	i := skipWS(body, 0)
	if i == len(body) {
		return true // an empty body is an empty object
	}
	if body[i] != '{' {
		return false
	}
	i = skipWS(body, i+1)
	if i < len(body) && body[i] == '}' {
		i++
	} else {
		for {
			name, esc, j, ok := plainString(body, i)
			if !ok || esc {
				return false // names with escapes: the reference path
			}
			i = skipWS(body, j)
			if i == len(body) || body[i] != ':' {
				return false
			}
			i = skipWS(body, i+1)
			var value []byte
			var escaped bool
			if j := i + 4; j <= len(body) && string(body[i:j]) == "null" {
				i = j
			} else if value, escaped, i, ok = plainString(body, i); !ok {
				return false
			} else if value == nil {
				value = body[i-1 : i-1] // "" is not null
			}
			fi, known := fields[string(name)]
			if !known || n == maxFastParams {
				return false
			}
			if t := fi.typ; t.Kind() != reflect.String && (t.Kind() != reflect.Pointer || t.Elem().Kind() != reflect.String) {
				return false
			}
			for _, m := range ms[:n] {
				if string(m.name) == string(name) {
					return false // the reference path reports it
				}
			}
			ms[n] = member{fi: fi, name: name, value: value, escaped: escaped}
			n++
			i = skipWS(body, i)
			if i == len(body) {
				return false
			}
			if body[i] == '}' {
				i++
				break
			}
			if body[i] != ',' {
				return false
			}
			i = skipWS(body, i+1)
		}
	}
	if skipWS(body, i) != len(body) {
		return false
	}
	for _, m := range ms[:n] {
		if m.value == nil {
			continue
		}
		f := v.FieldByIndex(m.fi.index)
		var str string
		if m.escaped {
			str = unescapeSimple(m.value)
		} else {
			// No copy: the string shares body's bytes (see the contract).
			str = unsafe.String(unsafe.SliceData(m.value), len(m.value))
		}
		if f.Kind() == reflect.String {
			f.SetString(str)
		} else {
			f.Set(reflect.ValueOf(&str))
		}
	}
	return true
}

// skipWS returns the index of the first byte at or after i that is not JSON
// white space.
func skipWS(b []byte, i int) int {
	for i < len(b) && (b[i] == ' ' || b[i] == '\t' || b[i] == '\n' || b[i] == '\r') {
		i++
	}
	return i
}

// plainString parses a JSON string at b[i] and returns its raw content
// (between the quotes; nil when empty), whether it holds escapes, and the
// index after its closing quote. ok is false when the string is malformed
// or outside what unescapeSimple decodes exactly as encoding/json does: a
// \u escape, or bytes that are not valid UTF-8.
func plainString(b []byte, i int) (s []byte, escaped bool, next int, ok bool) {
	if i >= len(b) || b[i] != '"' {
		return nil, false, 0, false
	}
	// Fast: up to the next quote, no escape, ASCII without controls.
	if q := bytes.IndexByte(b[i+1:], '"'); q >= 0 {
		if seg := b[i+1 : i+1+q]; bytes.IndexByte(seg, '\\') < 0 && asciiNoControl(seg) {
			if q == 0 {
				return nil, false, i + 2, true
			}
			return seg, false, i + 2 + q, true
		}
	}
	ascii := true
	for j := i + 1; j < len(b); j++ {
		switch c := b[j]; {
		case c == '"':
			if j == i+1 {
				return nil, false, j + 1, true
			}
			s = b[i+1 : j]
			if !ascii && !utf8.Valid(s) {
				return nil, false, 0, false
			}
			return s, escaped, j + 1, true
		case c == '\\':
			j++
			if j == len(b) {
				return nil, false, 0, false
			}
			switch b[j] {
			case '"', '\\', '/', 'b', 'f', 'n', 'r', 't':
				escaped = true
			default:
				return nil, false, 0, false
			}
		case c < 0x20:
			return nil, false, 0, false
		case c >= utf8.RuneSelf:
			ascii = false
		}
	}
	return nil, false, 0, false
}

// unescapeSimple decodes the content of a string plainString accepted.
func unescapeSimple(s []byte) string {
	out := make([]byte, 0, len(s))
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c != '\\' {
			out = append(out, c)
			continue
		}
		i++
		switch s[i] {
		case 'b':
			c = '\b'
		case 'f':
			c = '\f'
		case 'n':
			c = '\n'
		case 'r':
			c = '\r'
		case 't':
			c = '\t'
		default: // " \ /
			c = s[i]
		}
		out = append(out, c)
	}
	return string(out)
}

// decodeJSONParamsSlow is decodeJSONParams for every input: the reference
// implementation, built on encoding/json.
func decodeJSONParamsSlow(body []byte, dst any) error {
	body = bytes.TrimSpace(body)
	if len(body) == 0 {
		return nil
	}
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.UseNumber()
	tok, err := dec.Token()
	if err != nil || tok != json.Delim('{') {
		return paramErrorf("InvalidParameter", "the request body must be a JSON object")
	}
	v := reflect.ValueOf(dst).Elem()
	fields := fieldsOf(v.Type())
	seen := make(map[string]bool, 4)
	for dec.More() {
		tok, err := dec.Token()
		if err != nil {
			return paramErrorf("InvalidParameter", "malformed JSON body")
		}
		name := tok.(string)
		if seen[name] {
			return paramErrorf("InvalidParameter", "parameter %s is given twice", truncate(name, 64))
		}
		seen[name] = true
		var raw json.RawMessage
		if err := dec.Decode(&raw); err != nil {
			return paramErrorf("InvalidParameter", "malformed JSON body")
		}
		fi, ok := fields[name]
		if !ok {
			return paramErrorf("UnknownParameter", "the parameter %s is not recognized", truncate(name, 64))
		}
		if bytes.Equal(raw, []byte("null")) {
			continue
		}
		if err := json.Unmarshal(raw, v.FieldByIndex(fi.index).Addr().Interface()); err != nil {
			return paramErrorf("InvalidParameter", "parameter %s has the wrong type (want %s)", name, typeName(fi.typ))
		}
	}
	if _, err := dec.Token(); err != nil {
		return paramErrorf("InvalidParameter", "malformed JSON body")
	}
	if _, err := dec.Token(); err == nil {
		return paramErrorf("InvalidParameter", "data after the JSON object")
	}
	return nil
}

// readBody reads at most max+1 bytes of r's body (so the caller can tell a
// body over max), as io.ReadAll(io.LimitReader(r.Body, max+1)) does, but
// into one buffer sized from Content-Length when the request declares one.
func readBody(r *http.Request, max int64) ([]byte, error) {
	if n := r.ContentLength; n >= 0 && n <= max {
		// One byte more than declared, so that EOF is seen without growing.
		b := make([]byte, 0, n+1)
		for {
			m, err := r.Body.Read(b[len(b):cap(b)])
			b = b[:len(b)+m]
			if err == io.EOF {
				return b, nil
			}
			if err != nil {
				return b, err
			}
			if len(b) == cap(b) {
				// More than declared: fall back to the general reader.
				rest, err := io.ReadAll(io.LimitReader(r.Body, max+1-int64(len(b))))
				return append(b, rest...), err
			}
		}
	}
	return io.ReadAll(io.LimitReader(r.Body, max+1))
}

// decodeFormParams decodes flattened parameters into dst (a pointer to a
// struct). ps holds business parameters only, each name once.
func decodeFormParams(ps map[string]string, dst any) error {
	names := make([]string, 0, len(ps))
	for k := range ps {
		names = append(names, k)
	}
	sort.Strings(names)
	tree := map[string]any{}
	for _, name := range names {
		if err := insertPath(tree, strings.Split(name, "."), ps[name], name); err != nil {
			return err
		}
	}
	v := reflect.ValueOf(dst).Elem()
	return assignTree(v, tree, "")
}

// insertPath places value at the dotted path in a tree of maps.
func insertPath(tree map[string]any, path []string, value, full string) error {
	head := path[0]
	if head == "" {
		return paramErrorf("InvalidParameter", "malformed parameter name %s", truncate(full, 64))
	}
	if len(path) == 1 {
		if _, dup := tree[head]; dup {
			return paramErrorf("InvalidParameter", "parameter %s conflicts with another", truncate(full, 64))
		}
		tree[head] = value
		return nil
	}
	sub, ok := tree[head].(map[string]any)
	if !ok {
		if _, exists := tree[head]; exists {
			return paramErrorf("InvalidParameter", "parameter %s conflicts with another", truncate(full, 64))
		}
		sub = map[string]any{}
		tree[head] = sub
	}
	return insertPath(sub, path[1:], value, full)
}

// assignTree assigns a node of the flattened tree to v, guided by v's type.
func assignTree(v reflect.Value, node any, name string) error {
	t := v.Type()
	switch t.Kind() {
	case reflect.Pointer:
		if v.IsNil() {
			v.Set(reflect.New(t.Elem()))
		}
		return assignTree(v.Elem(), node, name)
	case reflect.Struct:
		m, ok := node.(map[string]any)
		if !ok {
			return paramErrorf("InvalidParameter", "parameter %s has the wrong type (want %s)", name, typeName(t))
		}
		fields := fieldsOf(t)
		for k, sub := range m {
			fi, ok := fields[k]
			if !ok {
				return paramErrorf("UnknownParameter", "the parameter %s is not recognized", truncate(join(name, k), 64))
			}
			if err := assignTree(v.FieldByIndex(fi.index), sub, join(name, k)); err != nil {
				return err
			}
		}
		return nil
	case reflect.Slice:
		m, ok := node.(map[string]any)
		if !ok {
			return paramErrorf("InvalidParameter", "parameter %s has the wrong type (want %s)", name, typeName(t))
		}
		if len(m) > 1000 {
			return paramErrorf("InvalidParameter", "parameter %s has too many elements", name)
		}
		s := reflect.MakeSlice(t, len(m), len(m))
		for k, sub := range m {
			i, err := strconv.Atoi(k)
			if err != nil || i < 0 || i >= len(m) || strconv.Itoa(i) != k {
				return paramErrorf("InvalidParameter", "parameter %s.%s: array indexes must be 0..n-1", name, truncate(k, 16))
			}
			if err := assignTree(s.Index(i), sub, join(name, k)); err != nil {
				return err
			}
		}
		v.Set(s)
		return nil
	}
	str, ok := node.(string)
	if !ok {
		return paramErrorf("InvalidParameter", "parameter %s has the wrong type (want %s)", name, typeName(t))
	}
	bad := paramErrorf("InvalidParameter", "parameter %s has the wrong type (want %s)", name, typeName(t))
	switch t.Kind() {
	case reflect.String:
		v.SetString(str)
	case reflect.Uint64, reflect.Uint32, reflect.Uint:
		n, err := strconv.ParseUint(str, 10, t.Bits())
		if err != nil {
			return bad
		}
		v.SetUint(n)
	case reflect.Int64, reflect.Int32, reflect.Int:
		n, err := strconv.ParseInt(str, 10, t.Bits())
		if err != nil {
			return bad
		}
		v.SetInt(n)
	case reflect.Bool:
		b, err := strconv.ParseBool(str)
		if err != nil {
			return bad
		}
		v.SetBool(b)
	default:
		return bad
	}
	return nil
}

func join(prefix, name string) string {
	if prefix == "" {
		return name
	}
	return prefix + "." + name
}

func typeName(t reflect.Type) string {
	for t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	switch t.Kind() {
	case reflect.String:
		return "String"
	case reflect.Uint64, reflect.Uint32, reflect.Uint:
		return "Integer"
	case reflect.Int64, reflect.Int32, reflect.Int:
		return "Integer"
	case reflect.Bool:
		return "Boolean"
	case reflect.Slice:
		return "Array"
	case reflect.Struct:
		return "Object"
	}
	return t.String()
}

// isParamError reports whether err is a parameter error.
func isParamError(err error) (*paramError, bool) {
	var pe *paramError
	ok := errors.As(err, &pe)
	return pe, ok
}
