//! Procedural macros of the Wasmgate plugin SDK.
//!
//! Use them through `wasmgate-sdk` (`use wasmgate_sdk::prelude::*;`), never directly: the code
//! they generate names paths inside `wasmgate_sdk`.
//!
//! # Why a derive of our own
//!
//! `serde`'s `#[derive(Deserialize)]` expands to paths into the `serde` crate (`extern crate
//! serde`), so re-exporting it from the SDK only works when the plugin crate also depends on
//! `serde`. Plugin crates depend on `wasmgate-sdk` alone, so the SDK offers this derive instead.
//! For an item `T` it emits, inside `const _: () = { ... };`:
//!
//! - a *mirror* of `T` (same shape, same fields or variants, same `#[serde(...)]` and `#[cfg(...)]`
//!   attributes, every other attribute dropped) carrying
//!   `#[derive(::wasmgate_sdk::__private::serde::Deserialize)]`,
//!   `#[serde(crate = "::wasmgate_sdk::__private::serde")]` and `#[serde(remote = "T")]`, so serde's
//!   own derive does the work through the SDK's copy of serde;
//! - `impl<'de> Deserialize<'de> for T`, delegating to the inherent `deserialize` that serde's
//!   `remote` derive puts on the mirror (it returns a `T`).
//!
//! The mirror lives in the same module as `T`, so private fields are fine.

use proc_macro::TokenStream;
use proc_macro2::{Span, TokenStream as TokenStream2};
use quote::quote;
use syn::{Attribute, Data, DeriveInput, Fields, Ident, parse_macro_input, spanned::Spanned};

/// Derives `serde::Deserialize` for a struct or enum through the SDK's copy of serde.
///
/// Accepts serde's container, field and variant attributes (`#[serde(default)]`,
/// `#[serde(rename_all = "kebab-case")]`, `#[serde(deny_unknown_fields)]`, ...). Generic items are
/// not supported.
#[proc_macro_derive(Deserialize, attributes(serde))]
pub fn derive_deserialize(input: TokenStream) -> TokenStream {
    let input = parse_macro_input!(input as DeriveInput);
    match expand(&input) {
        Ok(tokens) => tokens.into(),
        Err(err) => err.to_compile_error().into(),
    }
}

fn expand(input: &DeriveInput) -> syn::Result<TokenStream2> {
    if !input.generics.params.is_empty() || input.generics.where_clause.is_some() {
        return Err(syn::Error::new(
            input.generics.span(),
            "`wasmgate_sdk::Deserialize` does not support generic items; \
             deserialize a non-generic config type (its fields may be generic types such as \
             `Vec<String>` or `Option<u32>`)",
        ));
    }

    let target = &input.ident;
    let target_name = target.to_string();
    let mirror = Ident::new(&format!("__WasmgateDeserialize{target}"), Span::call_site());
    let container_attrs = kept_attrs(&input.attrs);

    let mut extra = TokenStream2::new();
    let body = match &input.data {
        Data::Struct(data) => {
            let fields = mirror_fields(&data.fields);
            let semi = match data.fields {
                Fields::Named(_) => quote!(),
                Fields::Unnamed(_) | Fields::Unit => quote!(;),
            };
            if has_bare_default(&input.attrs) {
                extra = mirror_default(target, &mirror, &data.fields);
            }
            quote!(struct #mirror #fields #semi)
        }
        Data::Enum(data) => {
            let variants = data.variants.iter().map(|variant| {
                let attrs = kept_attrs(&variant.attrs);
                let ident = &variant.ident;
                let fields = mirror_fields(&variant.fields);
                let discriminant = variant
                    .discriminant
                    .as_ref()
                    .map(|(eq, expr)| quote!(#eq #expr));
                quote!(#(#attrs)* #ident #fields #discriminant)
            });
            quote!(enum #mirror { #(#variants),* })
        }
        Data::Union(data) => {
            return Err(syn::Error::new(
                data.union_token.span(),
                "`wasmgate_sdk::Deserialize` supports structs and enums, not unions",
            ));
        }
    };

    Ok(quote! {
        #[doc(hidden)]
        const _: () = {
            // Never constructed: serde's `remote` derive only uses it as a pattern for `#target`.
            #[allow(dead_code, non_camel_case_types, clippy::allow_attributes)]
            #[derive(::wasmgate_sdk::__private::serde::Deserialize)]
            #[serde(crate = "::wasmgate_sdk::__private::serde")]
            #[serde(remote = #target_name)]
            #(#container_attrs)*
            #body

            #extra

            #[automatically_derived]
            impl<'de> ::wasmgate_sdk::__private::serde::Deserialize<'de> for #target {
                fn deserialize<__D>(deserializer: __D) -> ::core::result::Result<Self, __D::Error>
                where
                    __D: ::wasmgate_sdk::__private::serde::Deserializer<'de>,
                {
                    #mirror::deserialize(deserializer)
                }
            }
        };
    })
}

/// Whether the container has a bare `#[serde(default)]` (not `default = "path"`).
fn has_bare_default(attrs: &[Attribute]) -> bool {
    let mut found = false;
    for attr in attrs.iter().filter(|attr| attr.path().is_ident("serde")) {
        // Errors are serde's to report (the attribute is passed on to its derive unchanged).
        let _ = attr.parse_nested_meta(|meta| {
            if meta.input.peek(syn::Token![=]) {
                let _: syn::Expr = meta.value()?.parse()?;
            } else if meta.input.peek(syn::token::Paren) {
                let _: proc_macro2::Group = meta.input.parse()?;
            } else if meta.path.is_ident("default") {
                found = true;
            }
            Ok(())
        });
    }
    found
}

/// With a bare container `#[serde(default)]`, serde's derive bounds its impl on `Mirror: Default`
/// (while the values it uses come from `T::default()`). This satisfies the bound by converting
/// `T::default()` field by field.
fn mirror_default(target: &Ident, mirror: &Ident, fields: &Fields) -> TokenStream2 {
    let build = match fields {
        Fields::Named(named) => {
            let bindings = named.named.iter().map(|field| {
                let attrs = field.attrs.iter().filter(|a| a.path().is_ident("cfg"));
                let ident = &field.ident;
                quote!(#(#attrs)* #ident)
            });
            let bindings: Vec<_> = bindings.collect();
            quote! {
                let #target { #(#bindings),* } = <#target as ::core::default::Default>::default();
                #mirror { #(#bindings),* }
            }
        }
        Fields::Unnamed(unnamed) => {
            let bindings: Vec<_> = (0..unnamed.unnamed.len())
                .map(|i| Ident::new(&format!("__field{i}"), Span::call_site()))
                .collect();
            quote! {
                let #target( #(#bindings),* ) = <#target as ::core::default::Default>::default();
                #mirror( #(#bindings),* )
            }
        }
        Fields::Unit => quote!(#mirror),
    };
    quote! {
        impl ::core::default::Default for #mirror {
            fn default() -> Self {
                #build
            }
        }
    }
}

/// The fields of a struct or variant, with their `serde` and `cfg` attributes only.
fn mirror_fields(fields: &Fields) -> TokenStream2 {
    match fields {
        Fields::Named(named) => {
            let fields = named.named.iter().map(|field| {
                let attrs = kept_attrs(&field.attrs);
                let ident = &field.ident;
                let ty = &field.ty;
                quote!(#(#attrs)* #ident: #ty)
            });
            quote!({ #(#fields),* })
        }
        Fields::Unnamed(unnamed) => {
            let fields = unnamed.unnamed.iter().map(|field| {
                let attrs = kept_attrs(&field.attrs);
                let ty = &field.ty;
                quote!(#(#attrs)* #ty)
            });
            quote!(( #(#fields),* ))
        }
        Fields::Unit => quote!(),
    }
}

/// The attributes that matter to deserialisation: `#[serde(...)]` and `#[cfg(...)]` (a field
/// compiled out of `T` must be compiled out of the mirror too). Doc comments, derives, lint
/// attributes and the like are dropped.
fn kept_attrs(attrs: &[Attribute]) -> Vec<&Attribute> {
    attrs
        .iter()
        .filter(|attr| attr.path().is_ident("serde") || attr.path().is_ident("cfg"))
        .collect()
}
