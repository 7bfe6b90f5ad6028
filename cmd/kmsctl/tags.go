package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"

	"hsmkms/kmsclient"
)

// The tags of a key, through the Tag service kmsd serves beside the KMS
// API (httpapi/tagsvc.go): ModifyResourceTags to set and delete tags,
// DescribeResourceTagsByResourceIds to list them.

// tagCommandUsage lists the tag commands for the usage text.
func tagCommandUsage() string {
	return "  tag                      -key-id ID [-set KEY=VALUE]... [-delete KEY]...\n" +
		"  tags                     -key-id ID\n"
}

// multiFlag is a flag that may be given several times.
type multiFlag []string

func (m *multiFlag) String() string     { return strings.Join(*m, ",") }
func (m *multiFlag) Set(v string) error { *m = append(*m, v); return nil }

// tagKey sets and deletes tags of one key in one ModifyResourceTags.
func tagKey(ctx context.Context, c *client, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("tag", flag.ContinueOnError)
	fs.SetOutput(stderr)
	keyID := fs.String("key-id", "", "CMK id (required)")
	var set, del multiFlag
	fs.Var(&set, "set", "a tag to set, KEY=VALUE (repeatable)")
	fs.Var(&del, "delete", "a tag key to delete (repeatable)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *keyID == "" || len(set)+len(del) == 0 {
		return errors.New("tag: -key-id and at least one -set or -delete are required")
	}
	replace := make([]map[string]string, 0, len(set))
	for _, kv := range set {
		k, v, ok := strings.Cut(kv, "=")
		if !ok || k == "" {
			return fmt.Errorf("tag: -set %q: want KEY=VALUE", kv)
		}
		replace = append(replace, map[string]string{"TagKey": k, "TagValue": v})
	}
	deletes := make([]map[string]string, 0, len(del))
	for _, k := range del {
		deletes = append(deletes, map[string]string{"TagKey": k})
	}
	params := map[string]any{"Resource": "qcs::kms::uin/:key/" + *keyID}
	if len(replace) > 0 {
		params["ReplaceTags"] = replace
	}
	if len(deletes) > 0 {
		params["DeleteTags"] = deletes
	}
	var out struct{}
	if err := c.CallService(ctx, kmsclient.TagService, kmsclient.TagAPIVersion, "ModifyResourceTags", params, &out); err != nil {
		return err
	}
	fmt.Fprintf(stdout, "keyId\t%s\ntags set\t%d\ntags deleted\t%d\n", *keyID, len(replace), len(deletes))
	return nil
}

// listTags prints the tags of one key, a line each: KEY, a tab, VALUE.
func listTags(ctx context.Context, c *client, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("tags", flag.ContinueOnError)
	fs.SetOutput(stderr)
	keyID := fs.String("key-id", "", "CMK id (required)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *keyID == "" {
		return errors.New("tags: -key-id is required")
	}
	params := map[string]any{"ServiceType": "kms", "ResourcePrefix": "key", "ResourceIds": []string{*keyID}, "Limit": 100}
	var out struct {
		Tags []struct {
			TagKey   string `json:"TagKey"`
			TagValue string `json:"TagValue"`
		} `json:"Tags"`
	}
	if err := c.CallService(ctx, kmsclient.TagService, kmsclient.TagAPIVersion, "DescribeResourceTagsByResourceIds", params, &out); err != nil {
		return err
	}
	tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
	for _, t := range out.Tags {
		fmt.Fprintf(tw, "%s\t%s\n", t.TagKey, t.TagValue)
	}
	return tw.Flush()
}
