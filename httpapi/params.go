package httpapi

import (
	"errors"
	"fmt"
	"io"
	"net/http"
	"reflect"
	"sort"
	"strconv"
	"strings"
	"sync"
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
	index   []int
	typ     reflect.Type
	ordinal int    // the field's number in its struct (< 64: request structs are small)
	name    string // its JSON name
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
		if i >= 64 {
			panic("httpapi: request struct " + t.String() + " has more than 64 fields")
		}
		m[name] = fieldInfo{index: f.Index, typ: f.Type, ordinal: i, name: name}
	}
	fieldCache.Store(t, m)
	return m
}

// readBody reads at most max+1 bytes of r's body (so the caller can tell a
// body over max), as io.ReadAll(io.LimitReader(r.Body, max+1)) does, but
// into one buffer sized from Content-Length when the request declares one.
// A body read to its end is closed at once: net/http then has nothing left
// to drain after the handler (it would otherwise copy the body's remainder,
// empty, to io.Discard through an io.LimitReader of its own).
func readBody(r *http.Request, max int64) ([]byte, error) {
	if n := r.ContentLength; n >= 0 && n <= max {
		// One byte more than declared, so that EOF is seen without growing.
		b := make([]byte, 0, n+1)
		for {
			m, err := r.Body.Read(b[len(b):cap(b)])
			b = b[:len(b)+m]
			if err == io.EOF {
				r.Body.Close()
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
