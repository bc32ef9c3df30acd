// Package migrations embeds RTM's SQL migrations. They are applied at start-up by the store
// package through golang-migrate, inside schema rtmanager, as role rtmanagerservice.
package migrations

import "embed"

// FS holds the numbered up/down SQL files, in golang-migrate's naming.
//
//go:embed *.sql
var FS embed.FS
