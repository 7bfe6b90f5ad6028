package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"sort"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"
)

// keyCommand is one kmsctl command over one API 3.0 action: its flags
// become the action's parameters, and the Response is printed as a table
// (or as JSON with -json).
type keyCommand struct {
	action  string
	summary string
	flags   []keyFlag
}

// keyFlag maps a command-line flag to a parameter.
type keyFlag struct {
	name, param, usage string
	kind               flagKind
	required           bool
}

type flagKind int

const (
	str     flagKind = iota
	integer          // an unsigned integer parameter
	list             // comma-separated: KeyIds
)

var keyIDFlag = keyFlag{name: "key-id", param: "KeyId", usage: "CMK id", required: true}

// keyCommands lists the key commands; create-key, encrypt and decrypt are
// in main.go.
var keyCommands = map[string]keyCommand{
	"describe-key":  {"DescribeKey", "-key-id ID", []keyFlag{keyIDFlag}},
	"describe-keys": {"DescribeKeys", "-key-ids ID,ID...", []keyFlag{{name: "key-ids", param: "KeyIds", usage: "comma-separated CMK ids", kind: list, required: true}}},
	"list-keys": {"ListKeys", "[-offset N] [-limit N]", []keyFlag{
		{name: "offset", param: "Offset", kind: integer}, {name: "limit", param: "Limit", kind: integer, usage: "1..200, default 10"}}},
	"list-key-detail": {"ListKeyDetail", "[-offset N] [-limit N] [-state N] [-search TEXT] [-order 0|1] [-origin O] [-key-usage U]", []keyFlag{
		{name: "offset", param: "Offset", kind: integer}, {name: "limit", param: "Limit", kind: integer, usage: "1..200, default 10"},
		{name: "state", param: "KeyState", kind: integer, usage: "0 all, 1 Enabled, 2 Disabled, 3 PendingDelete, 5 Archived"},
		{name: "search", param: "SearchKeyAlias", usage: "part of a key id or alias"},
		{name: "order", param: "OrderType", kind: integer, usage: "0 newest first, 1 oldest first"},
		{name: "origin", param: "Origin", usage: "TENCENT_KMS, EXTERNAL or ALL"},
		{name: "key-usage", param: "KeyUsage", usage: "ENCRYPT_DECRYPT (default), an asymmetric KeyUsage, or ALL"}}},
	"key-versions": {"ListKeyVersions", "-key-id ID", []keyFlag{keyIDFlag}},
	"enable-key":   {"EnableKey", "-key-id ID", []keyFlag{keyIDFlag}},
	"disable-key":  {"DisableKey", "-key-id ID", []keyFlag{keyIDFlag}},
	"enable-keys":  {"EnableKeys", "-key-ids ID,ID...", []keyFlag{{name: "key-ids", param: "KeyIds", kind: list, required: true}}},
	"disable-keys": {"DisableKeys", "-key-ids ID,ID...", []keyFlag{{name: "key-ids", param: "KeyIds", kind: list, required: true}}},
	"schedule-key-deletion": {"ScheduleKeyDeletion", "-key-id ID -days N", []keyFlag{keyIDFlag,
		{name: "days", param: "PendingWindowInDays", kind: integer, usage: "7..30", required: true}}},
	"cancel-key-deletion": {"CancelKeyDeletion", "-key-id ID", []keyFlag{keyIDFlag}},
	"archive-key":         {"ArchiveKey", "-key-id ID", []keyFlag{keyIDFlag}},
	"cancel-key-archive":  {"CancelKeyArchive", "-key-id ID", []keyFlag{keyIDFlag}},
	"update-alias": {"UpdateAlias", "-key-id ID -alias NAME", []keyFlag{keyIDFlag,
		{name: "alias", param: "Alias", required: true}}},
	"update-key-description": {"UpdateKeyDescription", "-key-id ID -description TEXT", []keyFlag{keyIDFlag,
		{name: "description", param: "Description", required: true}}},
	"rotate-key": {"RotateKey", "-key-id ID", []keyFlag{keyIDFlag}},
	"enable-key-rotation": {"EnableKeyRotation", "-key-id ID [-rotate-days N]", []keyFlag{keyIDFlag,
		{name: "rotate-days", param: "RotateDays", kind: integer, usage: "7..365, default 365"}}},
	"disable-key-rotation":    {"DisableKeyRotation", "-key-id ID", []keyFlag{keyIDFlag}},
	"get-key-rotation-status": {"GetKeyRotationStatus", "-key-id ID", []keyFlag{keyIDFlag}},
	"generate-data-key": {"GenerateDataKey", "-key-id ID (-key-spec AES_128|AES_256 | -bytes N) [-context JSON]", []keyFlag{keyIDFlag,
		{name: "key-spec", param: "KeySpec"}, {name: "bytes", param: "NumberOfBytes", kind: integer, usage: "1..1024"},
		{name: "context", param: "EncryptionContext", usage: "encryption context, a JSON object of strings"}}},
	"re-encrypt": {"ReEncrypt", "-blob BLOB [-to-key-id ID] [-source-context JSON] [-context JSON]", []keyFlag{
		{name: "blob", param: "CiphertextBlob", required: true},
		{name: "to-key-id", param: "DestinationKeyId", usage: "default: the blob's key"},
		{name: "source-context", param: "SourceEncryptionContext"},
		{name: "context", param: "DestinationEncryptionContext"}}},
	"generate-random": {"GenerateRandom", "-bytes N", []keyFlag{{name: "bytes", param: "NumberOfBytes", kind: integer, usage: "1..1024", required: true}}},
}

// keyCommandUsage lists the key commands for the usage text.
func keyCommandUsage() string {
	names := make([]string, 0, len(keyCommands))
	for n := range keyCommands {
		names = append(names, n)
	}
	sort.Strings(names)
	var b strings.Builder
	for _, n := range names {
		fmt.Fprintf(&b, "  %-24s %s\n", n, keyCommands[n].summary)
	}
	b.WriteString(asymCommandUsage()) // asym.go
	return b.String()
}

// runKeyCommand runs one key command.
func runKeyCommand(ctx context.Context, c *client, name string, kc keyCommand, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(stderr)
	vals := make([]*string, len(kc.flags))
	for i, f := range kc.flags {
		vals[i] = fs.String(f.name, "", f.usage)
	}
	asJSON := fs.Bool("json", false, "print the Response as JSON")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("%s: unexpected arguments %q", name, fs.Args())
	}
	params := map[string]any{}
	set := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { set[f.Name] = true })
	for i, f := range kc.flags {
		if !set[f.name] {
			if f.required {
				return fmt.Errorf("%s: -%s is required", name, f.name)
			}
			continue
		}
		v := *vals[i]
		switch f.kind {
		case str:
			params[f.param] = v
		case integer:
			n, err := strconv.ParseUint(v, 10, 64)
			if err != nil {
				return fmt.Errorf("%s: -%s %q: want a non-negative integer", name, f.name, v)
			}
			params[f.param] = n
		case list:
			params[f.param] = strings.Split(v, ",")
		}
	}
	var resp map[string]json.RawMessage
	if err := c.call(ctx, kc.action, params, &resp); err != nil {
		return err
	}
	delete(resp, "RequestId")
	if *asJSON {
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		return enc.Encode(resp)
	}
	return printResponse(stdout, resp)
}

// printResponse prints a Response readably: lists of keys or versions as
// tables, a KeyMetadata as fields, other fields as "name value" lines.
func printResponse(w io.Writer, resp map[string]json.RawMessage) error {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	defer tw.Flush()
	if len(resp) == 0 {
		fmt.Fprintln(tw, "ok")
		return nil
	}
	if raw, ok := resp["KeyMetadata"]; ok {
		var m map[string]any
		if err := json.Unmarshal(raw, &m); err != nil {
			return err
		}
		printFields(tw, m)
		return nil
	}
	for _, list := range []struct {
		field string
		cols  []string
	}{
		{"KeyMetadatas", []string{"KeyId", "Alias", "KeyState", "CurrentVersion", "KeyRotationEnabled", "CreateTime", "DeletionDate", "Description"}},
		{"Keys", []string{"KeyId"}},
		{"Versions", []string{"Version", "Current", "CreateTime", "EncryptionCount"}},
	} {
		raw, ok := resp[list.field]
		if !ok {
			continue
		}
		var rows []map[string]any
		if err := json.Unmarshal(raw, &rows); err != nil {
			return err
		}
		for k, v := range resp {
			if k != list.field {
				var x any
				json.Unmarshal(v, &x)
				fmt.Fprintf(tw, "%s\t%s\n", k, format(k, x))
			}
		}
		fmt.Fprintln(tw, strings.Join(list.cols, "\t"))
		for _, r := range rows {
			cells := make([]string, len(list.cols))
			for i, c := range list.cols {
				cells[i] = format(c, r[c])
			}
			fmt.Fprintln(tw, strings.Join(cells, "\t"))
		}
		return nil
	}
	m := map[string]any{}
	for k, v := range resp {
		var x any
		json.Unmarshal(v, &x)
		m[k] = x
	}
	printFields(tw, m)
	return nil
}

func printFields(w io.Writer, m map[string]any) {
	names := make([]string, 0, len(m))
	for k := range m {
		names = append(names, k)
	}
	sort.Strings(names)
	for _, k := range names {
		fmt.Fprintf(w, "%s\t%s\n", k, format(k, m[k]))
	}
}

// format renders a value; UNIX times (fields ending in Time or Date) as
// RFC 3339, 0 as "-".
func format(name string, v any) string {
	switch x := v.(type) {
	case nil:
		return "-"
	case float64:
		if strings.HasSuffix(name, "Time") || strings.HasSuffix(name, "Date") {
			if x == 0 {
				return "-"
			}
			return time.Unix(int64(x), 0).UTC().Format(time.RFC3339)
		}
		return strconv.FormatFloat(x, 'f', -1, 64)
	case string:
		if x == "" {
			return "-"
		}
		return x
	}
	b, _ := json.Marshal(v)
	return string(b)
}
